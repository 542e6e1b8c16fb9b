"""Chest-CT anatomy in Hounsfield units, rendered one axial slice at a time with numpy.

Why analytic: every test, the demo and the demo weights use these phantoms, so one seed must
give the same patient at any matrix (training renders 256², DICOM 512²) and at any slice
position (a second series of the same study shows the same lungs). Shapes live in patient
millimetres (DICOM LPS: x towards the patient's left = image right, y posterior = image down,
z superior); smooth random fields live on a fixed coarse mm grid and are interpolated with
cubic B-splines, so nothing depends on the pixel size. ``t`` is the craniocaudal position in
lung units: 0 at the lung apex, 1 at the deepest point of the lung bases.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

AIR, FAT, MUSCLE, SOFT, BLOOD, LIVER = -1000.0, -100.0, 45.0, 30.0, 40.0, 58.0
BONE, MARROW, CARTILAGE = 650.0, 260.0, 120.0
HU_MIN, HU_MAX = -1024.0, 3071.0  # what the scanner reconstructs before padding
FINDINGS = ("covid", "normal", "nodule", "emphysema", "lobar_consolidation")
LOBES = ("RUL", "RML", "RLL", "LUL", "LLL")

_H = 6.0  # mm between knots of the random fields
_HALF = 282.0  # knots span +-_HALF mm: the largest FOV (0.9 * 512 / 2) plus a centring offset
_FIELD_STD = 0.47936507936507936**1.5  # std of B-spline-interpolated unit white noise in 3-D


Arr = np.ndarray
Window = tuple[slice, slice, np.ndarray]  # rows, columns and a value over that box


def rng_for(seed: int, *tags: int | str) -> np.random.Generator:
    """Independent, reproducible stream per purpose, so adding one draw never shifts another."""
    words = [seed, *(zlib.crc32(t.encode()) if isinstance(t, str) else t for t in tags)]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(words)))


def _smooth(x: float) -> float:
    """Smoothstep on [0, 1]: anatomy changes continuously along z."""
    x = min(max(x, 0.0), 1.0)
    return x * x * (3.0 - 2.0 * x)


def _bspline3(d: np.ndarray) -> np.ndarray:
    a = np.abs(d)
    w = np.where(a < 1, (4 - 6 * a**2 + 3 * a**3) / 6, np.where(a < 2, (2 - a) ** 3 / 6, 0.0))
    return np.where(w > 1e-6, w, 0.0)  # float32 denormals would make the matmuls 20x slower


@dataclass(frozen=True)
class Lesion:
    """A soft-edged ellipsoid; ``radii`` are (along the pleura, depth, z) in mm."""

    kind: str  # "ggo" (COVID pattern), "nodule", "bulla"
    center: tuple[float, float, float]
    radii: tuple[float, float, float]
    angle: float  # in-plane direction of the first radius, radians
    hu: float
    core: float = 0.0  # consolidated core, as a fraction of the normalised radius
    core_hu: float = 0.0
    paving: bool = False  # crazy-paving reticulation over the ground glass


@dataclass(frozen=True)
class BodyPlan:
    """Every per-patient number of the phantom (the random fields aside)."""

    seed: int
    finding: str
    severity: float
    apex_z: float
    base_z: float
    half_width: float
    half_depth: float
    fat: float
    wall: float
    lung_hu: float
    dome_right: float
    dome_left: float
    heart_shift: float
    rib_phase: float
    lesions: tuple[Lesion, ...] = ()
    lobe: str = ""
    lobe_hu: float = 0.0
    emphysema: float = 0.0

    def t(self, z: float) -> float:
        return (self.apex_z - z) / (self.apex_z - self.base_z)

    def z(self, t: float) -> float:
        return self.apex_z - t * (self.apex_z - self.base_z)

    def cavity(self, t: float) -> tuple[float, float, float]:
        """Inner thorax half-axes (lateral, anterior, posterior): narrower towards the apex."""
        s = 0.8 + 0.2 * _smooth(t / 0.4)
        ax = (self.half_width - self.fat - self.wall) * s
        ba = (self.half_depth - self.fat - self.wall) * s
        bp = (self.half_depth - self.fat - 1.5 * self.wall) * (0.9 + 0.1 * s)
        return ax, ba, bp

    @property
    def spine(self) -> tuple[float, float]:
        """(centre y, radius) of the vertebral body, at the posterior wall of the cavity."""
        r = 0.12 * self.half_width
        return self.cavity(0.5)[2] - 0.8 * r, r


def plan_body(seed: int, finding: str, severity: float) -> BodyPlan:
    """Draw a patient: body habitus, lung extent, diaphragm, and the finding's lesions."""
    if finding not in FINDINGS:
        raise ValueError(f"finding must be one of {FINDINGS}, not {finding!r}")
    rng = rng_for(seed, "body")
    hw = rng.uniform(140.0, 185.0)
    apex = rng.uniform(-150.0, 150.0)
    dome_r = rng.uniform(0.66, 0.74)
    base = dict(
        seed=seed,
        finding=finding,
        severity=severity,
        apex_z=apex,
        base_z=apex - rng.uniform(210.0, 270.0),
        half_width=hw,
        half_depth=hw * rng.uniform(0.66, 0.78),
        fat=hw * rng.uniform(0.03, 0.11),
        wall=rng.uniform(11.0, 16.0),
        lung_hu=rng.uniform(-890.0, -870.0),
        dome_right=dome_r,
        dome_left=dome_r + rng.uniform(0.03, 0.07),
        heart_shift=rng.uniform(0.22, 0.32),
        rib_phase=rng.uniform(0.0, 2 * np.pi),
    )
    plan = BodyPlan(**base)  # type: ignore[arg-type]
    frng = rng_for(seed, "finding")
    if finding == "covid":
        n = 2 + round(severity * 14)
        lesions = tuple(_covid_lesion(plan, frng, i, severity) for i in range(n))
        return BodyPlan(**base, lesions=lesions)  # type: ignore[arg-type]
    if finding == "nodule":
        return BodyPlan(**base, lesions=(_nodule(plan, frng),))  # type: ignore[arg-type]
    if finding == "emphysema":
        bullae = tuple(_bulla(plan, frng) for _ in range(int(frng.integers(0, 4))))
        extent = float(frng.uniform(0.4, 1.0))
        return BodyPlan(**base, lesions=bullae, emphysema=extent)  # type: ignore[arg-type]
    if finding == "lobar_consolidation":
        lobe = str(frng.choice(LOBES))
        return BodyPlan(**base, lobe=lobe, lobe_hu=float(frng.uniform(-40, 45)))  # type: ignore[arg-type]
    return plan


def _pleura_point(plan: BodyPlan, t: float, side: int, phi: float) -> tuple[float, ...]:
    """Point on the costal pleura at angle phi (0 lateral, +pi/2 posterior) and its normal."""
    ax, ba, bp = plan.cavity(t)
    b = bp if phi > 0 else ba
    x, y = side * ax * np.cos(phi), b * np.sin(phi)
    nx, ny = side * np.cos(phi) / ax, np.sin(phi) / b
    norm = float(np.hypot(nx, ny))
    return x, y, nx / norm, ny / norm


def _covid_lesion(plan: BodyPlan, rng: np.random.Generator, i: int, sev: float) -> Lesion:
    """Subpleural, posterior- and lower-zone-predominant ground glass, bilateral by design."""
    side = (-1, 1)[i % 2] if i < 2 else int(rng.choice((-1, 1)))
    t = float(np.clip(0.22 + 0.75 * rng.beta(2.2, 1.5), 0.25, 0.97))
    phi = float(np.clip(rng.normal(0.55, 0.55), -1.2, 1.45))
    x, y, nx, ny = _pleura_point(plan, t, side, phi)
    scale = 0.8 + 0.9 * sev
    rl, rd = rng.uniform(18, 40) * scale, rng.uniform(10, 22) * scale
    rz = rng.uniform(12, 30) * scale
    cx, cy = x - nx * 0.45 * rd, y - ny * 0.45 * rd
    core = rng.uniform(0.35, 0.65) if rng.random() < 0.2 + 0.5 * sev else 0.0
    return Lesion(
        kind="ggo",
        center=(float(cx), float(cy), plan.z(t)),
        radii=(rl, rd, rz),
        angle=float(np.arctan2(nx, -ny)),  # tangent to the pleura
        hu=float(rng.uniform(-620, -380)),
        core=float(core),
        core_hu=float(rng.uniform(-80, 40)),
        paving=bool(rng.random() < 0.15 + 0.25 * sev),
    )


def _nodule(plan: BodyPlan, rng: np.random.Generator) -> Lesion:
    """A round solid nodule, 5-25 mm, somewhere inside one lung."""
    t = float(rng.uniform(0.2, 0.75))
    side = int(rng.choice((-1, 1)))
    x, y, _, _ = _pleura_point(plan, t, side, float(rng.uniform(-0.9, 1.2)))
    ax, _, _ = plan.cavity(t)
    k = rng.uniform(0.25, 0.7)  # from the pleura towards the lung centre
    cx, cy = x + k * (side * 0.55 * ax - x), y * (1 - k)
    r = float(rng.uniform(2.5, 12.5))
    return Lesion("nodule", (cx, cy, plan.z(t)), (r, r, r), 0.0, float(rng.uniform(20, 60)))


def _bulla(plan: BodyPlan, rng: np.random.Generator) -> Lesion:
    """An apical subpleural bulla (emphysema)."""
    t = float(rng.uniform(0.12, 0.45))
    x, y, nx, ny = _pleura_point(plan, t, int(rng.choice((-1, 1))), float(rng.uniform(-0.8, 0.9)))
    r = float(rng.uniform(7, 22))
    return Lesion("bulla", (x - nx * 0.6 * r, y - ny * 0.6 * r, plan.z(t)), (r, r, r), 0.0, -995)


def _axis_knots(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    u = (v.astype(np.float64) + _HALF) / _H
    i0 = np.clip(np.floor(u).astype(np.intp) - 1, 0, round(2 * _HALF / _H) - 3)
    return i0, _bspline3(u[:, None] - (i0[:, None] + np.arange(4))).astype(np.float32)


@dataclass(frozen=True)
class Grid:
    """Pixel centres of a square slice in patient mm (row = y, column = x)."""

    matrix: int
    spacing: float
    x0: float  # x of the centre of column 0
    y0: float

    @cached_property
    def xs(self) -> np.ndarray:
        return (self.x0 + self.spacing * np.arange(self.matrix)).astype(np.float32)

    @cached_property
    def ys(self) -> np.ndarray:
        return (self.y0 + self.spacing * np.arange(self.matrix)).astype(np.float32)

    @cached_property
    def knots(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """First knot and the four B-spline weights, per row (iy, wy) and column (ix, wx)."""
        return (*_axis_knots(self.ys), *_axis_knots(self.xs))

    @cached_property
    def outside_circle(self) -> np.ndarray:
        """Pixels outside the reconstruction circle inscribed in the image."""
        c = (self.matrix - 1) / 2
        i = (np.arange(self.matrix) - c) ** 2
        return (i[:, None] + i[None, :]) > (self.matrix / 2) ** 2


@dataclass
class SliceMaps:
    """A rendered slice and what it shows: lung pixels, COVID-pattern lesions, other findings."""

    hu: np.ndarray
    lung: np.ndarray
    covid: np.ndarray
    other: np.ndarray
    lung_area: int = field(init=False)

    def __post_init__(self) -> None:
        self.lung_area = int(self.lung.sum())

    @property
    def lesion_fraction(self) -> float:
        return float(self.covid.sum()) / self.lung_area if self.lung_area else 0.0


class _Canvas:
    """One slice being painted: HU image, lung mask and window helpers."""

    def __init__(self, grid: Grid) -> None:
        self.g = grid
        self.xs, self.ys = grid.xs, grid.ys
        self.img = np.full((grid.matrix, grid.matrix), AIR, np.float32)
        self.lung = np.zeros((grid.matrix, grid.matrix), bool)

    def q(self, cx: float, cy: float, ax: float, ba: float, bp: float, p: float = 2.0) -> Arr:
        """Normalised radius (squared for p=2) of an ellipse with different front/back halves."""
        dx, dy = (self.xs - cx) / ax, self.ys - cy
        qy = np.abs(np.where(dy < 0, dy / ba, dy / bp)) ** p
        return (dx * dx)[None, :] + qy[:, None]

    def ellipse(
        self, cx: float, cy: float, rx: float, ry: float, angle: float = 0.0
    ) -> Window | None:
        """(rows, cols, d2) over the bounding box, or None when the ellipse misses the image."""
        ext_x = ext_y = max(rx, ry)
        if angle == 0.0:
            ext_x, ext_y = rx, ry
        c0, c1 = np.searchsorted(self.xs, (cx - ext_x, cx + ext_x))
        r0, r1 = np.searchsorted(self.ys, (cy - ext_y, cy + ext_y))
        if c0 >= c1 or r0 >= r1:
            return None
        dx, dy = self.xs[c0:c1] - cx, self.ys[r0:r1] - cy
        if angle == 0.0:
            d2 = ((dx / rx) ** 2)[None, :] + ((dy / ry) ** 2)[:, None]
        else:
            c, s = np.cos(angle), np.sin(angle)
            u = dx[None, :] * c + dy[:, None] * s
            v = dy[:, None] * c - dx[None, :] * s
            d2 = (u / rx) ** 2 + (v / ry) ** 2
        return slice(r0, r1), slice(c0, c1), d2

    def disc(
        self,
        cx: float,
        cy: float,
        rx: float,
        ry: float,
        hu: float,
        angle: float = 0.0,
        where: Arr | None = None,
    ) -> None:
        """Paint a filled ellipse; what it covers is not lung."""
        e = self.ellipse(cx, cy, rx, ry, angle)
        if e is None:
            return
        rs, cs, d2 = e
        m = d2 <= 1.0
        if where is not None:
            m &= where[rs, cs]
        self.img[rs, cs][m] = hu
        self.lung[rs, cs][m] = False


class Phantom:
    """A patient: the plan plus its random fields; ``render`` gives noiseless HU slices.
    ``head=True`` renders a head instead (scope tests: a CT that is not a chest)."""

    def __init__(self, plan: BodyPlan, *, head: bool = False) -> None:
        self.plan, self.head = plan, head
        rng = rng_for(plan.seed, "fields")
        self.z0 = plan.base_z - 80.0  # studies cover the lungs plus at most 35 mm each side
        nz = int((plan.apex_z + 80.0 - self.z0) / _H) + 4
        nk = round(2 * _HALF / _H) + 1
        # vessel fields are sampled at z0 + (z - z0) / 3, so a third of the knots suffices
        self.vessel = rng.standard_normal((nz // 3 + 4, 2, nk, nk), dtype=np.float32)
        self.texture = rng.standard_normal((nz, 2, nk, nk), dtype=np.float32)
        self.vessel /= _FIELD_STD
        self.texture /= _FIELD_STD

    def _fields(self, z: float, rs: slice, cs: slice, grid: Grid) -> np.ndarray:
        """The four fields over a window, (4, rows, cols). The vessel fields vary 3x slower
        along z, so their tubes run mostly craniocaudally and cut the slice as dots, as real
        vessels do. Sparse separable interpolation: no BLAS, whose threads stall on busy hosts."""
        iy, wy, ix, wx = grid.knots
        iy, wy, ix, wx = iy[rs], wy[rs], ix[cs], wx[cs]
        k0, k1 = int(ix[0]), int(ix[-1]) + 4
        zv = self.z0 + (z - self.z0) / 3.0
        g = np.concatenate([_knots(self.vessel, zv - self.z0), _knots(self.texture, z - self.z0)])
        g = g[:, :, k0:k1]
        a = g[:, iy, :] * wy[:, 0, None]
        for m in range(1, 4):
            a += g[:, iy + m, :] * wy[:, m, None]
        at = np.ascontiguousarray(a.transpose(2, 0, 1)).reshape(k1 - k0, -1)
        ix = ix - k0
        o = at[ix] * wx[:, 0, None]
        for m in range(1, 4):
            o += at[ix + m] * wx[:, m, None]
        return np.ascontiguousarray(o.reshape(len(ix), 4, -1).transpose(1, 2, 0))

    def render(self, z: float, grid: Grid) -> SliceMaps:
        if self.head:
            return _head(self.plan, z, grid)
        p, t = self.plan, self.plan.t(z)
        c = _Canvas(grid)
        _table(c, p)
        ax, ba, bp = p.cavity(t)
        sh, ab = _smooth(-t / 0.12), _smooth((t - 1.0) / 0.15)
        a = p.half_width * (1 + 0.14 * sh - 0.03 * ab)
        bya, byp = p.half_depth * (1 - 0.08 * sh + 0.06 * ab), p.half_depth * (1 - 0.05 * sh)
        c.img[c.q(0, 0, a, bya, byp, 2.4) <= 1] = 20.0  # skin
        c.img[c.q(0, 0, a - 2, bya - 2, byp - 2, 2.4) <= 1] = FAT
        c.img[c.q(0, 0, a - 2 - p.fat, bya - 2 - p.fat, byp - 2 - p.fat, 2.4) <= 1] = MUSCLE
        qc = c.q(0, 0, ax, ba, bp)
        cav = qc <= 1.0
        c.img[cav] = SOFT if t < 0.05 else -70.0  # neck tissue / mediastinal fat
        dome_ok = _dome(c, p, t, ax, ba, bp) if 0 < t < 1 else np.full(cav.shape, t <= 0)
        if 0 < t < 1:
            c.lung = cav & dome_ok & _apex(c, t, ax, bp)
        _ribs(c, p, t, qc, ax, ba, bp)
        _upper_bones(c, t, a, ax, ba, bp)
        if t > 0.3:
            _abdomen(c, ax, ba, bp, cav & ~dome_ok)
        _spine(c, p, t)
        _mediastinum(c, p, t, ax, ba, bp, cav)
        covid = np.zeros_like(c.lung)
        other = np.zeros_like(c.lung)
        if c.lung.any():
            self._lungs(c, z, t, bp, qc, covid, other)
        _airways(c, p, t)
        covid &= c.lung
        other &= c.lung
        return SliceMaps(c.img, c.lung, covid, other)

    def _lungs(
        self, c: _Canvas, z: float, t: float, bp: float, qc: Arr, covid: Arr, other: Arr
    ) -> None:
        """Parenchyma, vessels and the findings, computed over the lungs' bounding box only."""
        p = self.plan
        rows, cols = np.flatnonzero(c.lung.any(1)), np.flatnonzero(c.lung.any(0))
        rs, cs = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
        f = self._fields(z, rs, cs, c.g)
        xs, ys, lung = c.xs[cs], c.ys[rs], c.lung[rs, cs]
        grav = np.clip(ys / (0.9 * bp), -1, 1)[:, None]  # dependent lung is denser
        hu = p.lung_hu + 28.0 * grav + 10.0 * f[2]
        hil_x, hil_y = 0.22 * p.cavity(t)[0], 0.0
        hil = np.exp(-((np.abs(xs)[None, :] - hil_x) ** 2 + ((ys - hil_y) ** 2)[:, None]) / 3200.0)
        pleura = np.clip((1.0 - qc[rs, cs]) * 9.0, 0.25, 1.0)  # few vessels under the pleura
        tube = np.maximum(np.abs(f[0]), np.abs(f[1])) / (0.12 * pleura * (1.0 + 1.8 * hil))
        if p.emphysema:
            region = np.clip(0.8 * f[3] + 2.5 * p.emphysema - 0.5, 0, 1) * (1 - 0.8 * _smooth(t))
            w = np.clip((f[2] - 0.85) / 0.25, 0, 1) * region  # round holes, upper zones
            hu += w * (-990.0 - hu)
            other[rs, cs] |= w >= 0.5
        les = [(le, w) for le in p.lesions if (w := _lesion_d(le, z, xs, ys)) is not None]
        cov = covid[rs, cs]
        for le, (r, k, d) in les:
            if le.kind == "ggo":
                w = np.clip((1.0 - d + 0.2 * f[3][r, k]) / 0.3, 0, 1)
                hu[r, k] += w * (le.hu - hu[r, k])
                cov[r, k] |= w >= 0.5
        hu += np.clip(1.6 - tube, 0, 1) * (BLOOD - hu)  # vessels stay visible in ground glass
        for le, (r, k, d) in les:
            _lesion_overlay(le, hu, r, k, d, f, cov, other[rs, cs])
        if p.lobe:
            lobe = _lobe_mask(p.lobe, t, xs, ys, bp) & lung
            bronchi = np.clip(1.6 - tube / 0.8, 0, 1) * hil
            solid = p.lobe_hu + 12.0 * f[2]
            hu = np.where(lobe, solid + bronchi * (-920.0 - solid), hu)
            other[rs, cs] |= lobe
        c.img[rs, cs] = np.where(lung, hu, c.img[rs, cs])

    def scout(self, z_top: float, z_bottom: float, rows: int, fov: float) -> np.ndarray:
        """Coronal projection radiograph (localizer): water-equivalent path length in mm along
        y, rows from z_top down to z_bottom, ``rows`` columns across ``fov``."""
        sp = fov / rows
        grid = Grid(rows, sp, -fov / 2 + sp / 2, -fov / 2 + sp / 2)
        out = np.empty((rows, rows), np.float32)
        for i, z in enumerate(np.linspace(z_top, z_bottom, rows)):
            mu = np.clip(self.render(float(z), grid).hu / 1000.0 + 1.0, 0.0, None)
            out[i] = mu.sum(axis=0) * sp
        return out


def _knots(fields: np.ndarray, dz: float) -> np.ndarray:
    """Coarse fields at height dz above their first knot plane (cubic B-spline along z)."""
    u = dz / _H
    k0 = int(np.floor(u)) - 1
    idx = np.clip(k0 + np.arange(4), 0, fields.shape[0] - 1)
    w = _bspline3(u - (k0 + np.arange(4))).astype(np.float32)
    return np.einsum("k,k...->...", w, fields[idx])  # no BLAS (see _fields)


def _head(p: BodyPlan, z: float, grid: Grid) -> SliceMaps:
    """Scalp, skull, grey and white matter, ventricles: enough to look like a head CT."""
    c = _Canvas(grid)
    u = (z - (p.apex_z + p.base_z) / 2) / 85.0
    a, b = 70.0 + 0.05 * (p.half_width - 160.0), 92.0
    c.img[(c.ys[:, None] > b + 8) & (c.ys[:, None] < b + 14) & (np.abs(c.xs) < 110)] = 180.0
    k = float(np.sqrt(max(0.0, 1 - u * u))) if u > -0.5 else 0.87
    if k > 0.2:
        c.disc(0, 0, a * k, b * k, 25.0)
        c.disc(0, 0, a * k - 4, b * k - 4, BONE + 300)
        c.disc(0, 0, a * k - 10, b * k - 10, 38.0)
        c.disc(0, 4, 0.6 * a * k, 0.65 * b * k, 28.0)
        if abs(u) < 0.35:
            for s in (-1, 1):
                c.disc(s * 8, -6, 5, 24 * (1 - abs(u)), 6.0, angle=s * 0.15)
    empty = np.zeros_like(c.lung)
    return SliceMaps(c.img, empty, empty.copy(), empty.copy())


def _lesion_d(le: Lesion, z: float, xs: Arr, ys: Arr) -> Window | None:
    """Normalised ellipsoid distance of a lesion over its box in the lung window, or None."""
    cx, cy, cz = le.center
    rl, rd, rz = le.radii
    dz = (z - cz) / rz
    ext = max(rl, rd) * 1.3
    if abs(dz) >= 1.2:
        return None
    c0, c1 = np.searchsorted(xs, (cx - ext, cx + ext))
    r0, r1 = np.searchsorted(ys, (cy - ext, cy + ext))
    if c0 >= c1 or r0 >= r1:
        return None
    dx, dy = xs[c0:c1] - cx, ys[r0:r1] - cy
    c, s = np.cos(le.angle), np.sin(le.angle)
    u = (dx[None, :] * c + dy[:, None] * s) / rl
    v = (dy[:, None] * c - dx[None, :] * s) / rd
    return slice(r0, r1), slice(c0, c1), np.sqrt(u * u + v * v + dz * dz)


def _lesion_overlay(
    le: Lesion, hu: Arr, r: slice, k: slice, d: Arr, f: Arr, cov: Arr, other: Arr
) -> None:
    """What hides the vessels: consolidation, reticulation, nodules, bullae."""
    if le.kind == "ggo":
        if le.core:
            w = np.clip((le.core - d + 0.15 * f[3][r, k]) / 0.12, 0, 1)
            hu[r, k] += w * (le.core_hu + 15.0 * f[2][r, k] - hu[r, k])
        if le.paving:
            w = np.clip((1.0 - d + 0.2 * f[3][r, k]) / 0.3, 0, 1)
            net = np.minimum(np.abs(f[2][r, k]), np.abs(f[3][r, k]))  # zero lines: polygons
            hu[r, k] += w * np.clip(1.3 - net / 0.15, 0, 1) * 160.0
        return
    sharp = le.radii[0] / 0.8  # edge about 0.8 mm wide
    w = np.clip((1.0 - d) * sharp + 0.5, 0, 1)
    hu[r, k] += w * (le.hu - hu[r, k])
    other[r, k] |= w >= 0.5


def _lobe_mask(lobe: str, t: float, xs: np.ndarray, ys: np.ndarray, bp: float) -> np.ndarray:
    """Lobes split by the oblique fissure (a plane sloping forward and down) and, on the right,
    the horizontal fissure at t = 0.45."""
    side = (xs < 0) if lobe[0] == "R" else (xs > 0)
    fissure = bp * (1 - 2.2 * (t - 0.22) / 0.7) + 0.1 * np.abs(xs)[None, :]
    lower = ys[:, None] > fissure
    if lobe[1:] == "LL":
        m = lower
    elif lobe == "RML":
        m = ~lower & (t >= 0.45)
    elif lobe == "RUL":
        m = ~lower & (t < 0.45)
    else:
        m = ~lower
    return m & side[None, :]


def _table(c: _Canvas, p: BodyPlan) -> None:
    """Curved carbon-fibre table with foam core, just under the patient's back."""
    top = p.half_depth + 1.0 - 0.0007 * c.xs**2  # the body, painted next, lies on it
    r0, r1 = np.searchsorted(c.ys, (top.min(), top.max() + 16.0))
    if r0 >= r1:
        return
    dy = c.ys[r0:r1, None] - top[None, :]
    inside = (np.abs(c.xs) < 210)[None, :]
    win = c.img[r0:r1]
    win[(dy >= 0) & (dy < 16) & inside] = -750.0
    win[(((dy >= 0) & (dy < 2.5)) | ((dy >= 13.5) & (dy < 16))) & inside] = 180.0


def _dome(c: _Canvas, p: BodyPlan, t: float, ax: float, ba: float, bp: float) -> np.ndarray:
    """True above the diaphragm: two domes (right higher), deepest in the posterior recesses.
    The dome surface is t_dome = top + (1 - top) * min(qx + qy, 1); above it means
    qy > (t - top) / (1 - top) - qx, one comparison of two 1-D profiles."""
    right = c.xs < 0
    ttop = np.where(right, p.dome_right, p.dome_left)
    qx = ((c.xs - np.where(right, -0.45, 0.45) * ax) / (0.75 * ax)) ** 2
    dy = c.ys + 0.15 * ba
    qy = np.where(dy > 0, dy / (0.8 * bp), dy / (1.3 * ba)) ** 2
    return qy[:, None] > ((t - ttop) / (1 - ttop) - qx)[None, :]


def _apex(c: _Canvas, t: float, ax: float, bp: float) -> np.ndarray:
    """The lung apices are two small posterolateral domes that widen quickly downwards."""
    if t >= 0.3:
        return np.ones((c.g.matrix, c.g.matrix), bool)
    ra = 0.7 * ax * np.sqrt(t / 0.3)
    qx = ((np.abs(c.xs) - 0.5 * ax) / ra) ** 2
    qy = ((c.ys - 0.1 * bp) / (1.1 * ra)) ** 2
    return (qx[None, :] + qy[:, None]) <= 1.0


def _ribs(c: _Canvas, p: BodyPlan, t: float, qc: Arr, ax: float, ba: float, bp: float) -> None:
    """Rib arcs in a band outside the pleura; they slope, so the arcs move with z."""
    if not -0.08 < t < 1.2:
        return
    band = (qc > 1.0) & (c.q(0, 0, ax + 9, ba + 9, bp + 9) <= 1.0)
    ii, jj = np.nonzero(band)
    x, y = c.xs[jj], c.ys[ii]
    psi = np.arctan2(y, x)
    on = np.cos(9.0 * psi + 14.0 * t * np.sign(x) + p.rib_phase) > 0.1
    front = (np.abs(x) < 0.22 * ax) & (y < 0)
    c.img[ii[on & ~front], jj[on & ~front]] = BONE
    c.img[ii[on & front], jj[on & front]] = CARTILAGE
    if 0.05 < t < 0.8:  # sternum
        wide = 1.6 if t < 0.18 else 1.0
        c.disc(0, -ba - 7, 13 * wide, 6, BONE)
        c.disc(0, -ba - 7, 13 * wide - 3, 3.5, MARROW)


def _upper_bones(c: _Canvas, t: float, a: float, ax: float, ba: float, bp: float) -> None:
    """Scapulae behind the ribs; humeral heads and clavicles at the shoulders."""
    if -0.2 < t < 0.5:
        for s in (-1, 1):
            c.disc(s * 0.7 * ax, 0.75 * bp + 12, 42, 4.5, BONE, angle=-s * 0.55)
    if -0.25 < t < -0.02:
        for s in (-1, 1):
            c.disc(s * (a - 28), 0.05 * bp, 22, 22, BONE)
            c.disc(s * (a - 28), 0.05 * bp, 19, 19, MARROW)
    if -0.15 < t < 0.03:
        for s in (-1, 1):
            c.disc(s * 0.42 * a, -ba - 4, 0.32 * a, 6, BONE, angle=s * 0.35)


def _spine(c: _Canvas, p: BodyPlan, t: float) -> None:
    """Vertebral body, canal with cord, arch, spinous and transverse processes."""
    yv, r = p.spine
    c.disc(0, yv, r + 6, r + 10, SOFT)  # paravertebral tissue keeps lungs off the bone
    c.disc(0, yv + r + 9, 14, 13, BONE)
    c.disc(0, yv + r + 9, 8, 8, SOFT)
    tip = min(yv + r + 44, p.half_depth - p.fat - 8)  # spinous process stays under the skin
    c.disc(0, (yv + r + 14 + tip) / 2, 5, (tip - yv - r - 14) / 2, BONE)
    for s in (-1, 1):
        c.disc(s * 22, yv + r + 6, 14, 5, BONE, angle=-s * 0.3)
    c.disc(0, yv, r, r * 0.9, BONE + 150)
    c.disc(0, yv, r - 3, r * 0.9 - 3, MARROW)


def _mediastinum(
    c: _Canvas, p: BodyPlan, t: float, ax: float, ba: float, bp: float, cav: Arr
) -> None:
    """Mediastinal fat, heart, great vessels and hila; everything painted here is not lung."""
    yv, rv = p.spine
    if 0 < t < 1.05:
        w = ax * (0.16 + 0.08 * _smooth((t - 0.15) / 0.25))
        c.disc(0, -0.45 * ba, w, 0.6 * ba, -70.0, where=cav)  # anterior: wide
        c.disc(0.05 * ax, (yv - 0.3 * ba) / 2, 0.6 * w, (yv + 0.3 * ba) / 2, -70.0, where=cav)
    hs = float(np.sqrt(max(0.0, 1 - ((t - 0.74) / 0.3) ** 2)))
    if hs > 0.15:  # heart: anterior, to the left, long axis pointing left-anterior
        hx, hy, rx, ry = p.heart_shift * ax, -0.3 * ba, 0.46 * ax * hs, 0.56 * ba * hs
        c.disc(hx, hy, rx + 4, ry + 4, -80.0, angle=-0.6)
        c.disc(hx, hy, rx, ry, BLOOD, angle=-0.6)
    if t > 0.18:  # descending aorta, left-anterolateral of the spine
        c.disc(0.85 * rv, yv - 0.95 * rv, 12, 12, BLOOD)
    if 0.25 < t < 0.5:
        c.disc(-0.08 * ax, -0.35 * ba, 15, 15, BLOOD)  # ascending aorta
    elif 0.18 < t <= 0.25:  # arch: from the ascending to the descending aorta
        x0, y0, x1, y1 = -0.08 * ax, -0.35 * ba, 0.85 * rv, yv - 0.95 * rv
        ang = float(np.arctan2(y1 - y0, x1 - x0))
        half = float(np.hypot(x1 - x0, y1 - y0)) / 2 + 12
        c.disc((x0 + x1) / 2, (y0 + y1) / 2, half, 13, BLOOD, angle=ang)
    if 0.08 < t < 0.45:
        c.disc(-0.22 * ax, -0.25 * ba, 10, 10, BLOOD)  # superior vena cava
    if 0.3 < t < 0.42:
        c.disc(0.1 * ax, -0.35 * ba, 14, 14, BLOOD)  # pulmonary trunk
    if 0.3 < t < 0.62:  # hilar vessels, attached to the mediastinum
        w = ax * (0.16 + 0.08 * _smooth((t - 0.15) / 0.25))
        for s in (-1, 1):
            c.disc(s * (0.6 * w + 6), 0.05 * bp, 14, 8, BLOOD, angle=s * 0.3)
    c.disc(5, yv - rv - 8, 7, 6, SOFT)  # oesophagus


def _airways(c: _Canvas, p: BodyPlan, t: float) -> None:
    """Trachea down to the carina at t = 0.3, then the main bronchi towards the hila."""
    yv, rv = p.spine
    yt = yv - rv - 24
    if -0.35 < t < 0.3:
        c.disc(0, yt, 11.5, 10.5, SOFT)
        c.disc(0, yt, 9, 8, AIR)
    elif 0.3 <= t < 0.42:
        s = (t - 0.3) / 0.12
        for side in (-1, 1):
            x = side * (6 + 0.2 * p.cavity(t)[0] * s)
            c.disc(x, yt + 8 * s, 8.5, 8.5, SOFT)
            c.disc(x, yt + 8 * s, 6.5, 6.5, AIR)


def _abdomen(c: _Canvas, ax: float, ba: float, bp: float, where: Arr) -> None:
    """Liver on the right, stomach with its gas and the spleen on the left, under the domes."""
    c.img[where] = -20.0
    c.disc(-0.25 * ax, 0.0, 0.85 * ax, 0.95 * bp, LIVER, where=where)
    c.disc(0.4 * ax, -0.35 * ba, 0.35 * ax, 0.4 * ba, SOFT, where=where)
    c.disc(0.4 * ax, -0.45 * ba, 0.28 * ax, 0.22 * ba, AIR, where=where)
    c.disc(0.62 * ax, 0.35 * bp, 0.25 * ax, 0.35 * bp, 48.0, where=where)


def acquire(
    hu: np.ndarray,
    rng: np.random.Generator,
    *,
    noise_hu: float,
    sharp: bool,
    grid: Grid,
    padding_hu: float,
) -> np.ndarray:
    """What a scanner adds: noise, the kernel's blur or edge enhancement, the -1024..3071
    reconstruction range, and padding outside the reconstruction circle."""
    # Triangular noise through the 3x3 kernel is close to Gaussian and 4x cheaper to draw.
    gain = 1.77 if sharp else 0.375  # std of the 3x3 kernels below applied to white noise
    scale = np.float32(noise_hu * min(1.0, grid.matrix / 512.0) / gain * np.sqrt(6.0))
    u = rng.random((2, *hu.shape), dtype=np.float32)
    out = u[0]
    out += u[1]
    out -= 1.0
    out *= scale
    out += hu
    blur = _blur121(out)
    if sharp:  # unsharp mask: out + (out - blur)
        out *= 2.0
        out -= blur
    else:
        out = blur
    np.clip(out, HU_MIN, HU_MAX, out=out)
    out[grid.outside_circle] = padding_hu
    return out


def _blur121(a: np.ndarray) -> np.ndarray:
    """Separable [1 2 1]/4 blur (edges kept), in a few in-place passes."""
    b = a * 0.5
    b[1:-1] += a[:-2] * 0.25
    b[1:-1] += a[2:] * 0.25
    b[0] += a[0] * 0.5
    b[-1] += a[-1] * 0.5
    o = b * 0.5
    o[:, 1:-1] += b[:, :-2] * 0.25
    o[:, 1:-1] += b[:, 2:] * 0.25
    o[:, 0] += b[:, 0] * 0.5
    o[:, -1] += b[:, -1] * 0.5
    return o
