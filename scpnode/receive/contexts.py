"""Which SOP classes and transfer syntaxes the SCP accepts, in our order of preference.

The acceptor's list order wins in pynetdicom's negotiation, so uncompressed syntaxes come
first; compressed ones are offered only when a decoder with a licence compatible with ours
(python-gdcm, pyjpegls, pylibjpeg-openjpeg, pylibjpeg-rle, pydicom) is importable, because a
study we cannot decode is a study we cannot analyse.
"""

from __future__ import annotations

import logging

from pydicom import uid as dcm_uid
from pydicom.pixels import get_decoder
from pynetdicom import AllStoragePresentationContexts, build_context
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    EnhancedCTImageStorage,
    Verification,
)

log = logging.getLogger(__name__)

UNCOMPRESSED = [
    dcm_uid.ExplicitVRLittleEndian,
    dcm_uid.ImplicitVRLittleEndian,
    dcm_uid.DeflatedExplicitVRLittleEndian,
]
LOSSLESS_COMPRESSED = [
    dcm_uid.JPEGLosslessSV1,
    dcm_uid.JPEGLossless,
    dcm_uid.JPEGLSLossless,
    dcm_uid.JPEG2000Lossless,
    dcm_uid.RLELossless,
]
CT_SOP_CLASSES = frozenset({str(CTImageStorage), str(EnhancedCTImageStorage)})


def decodable_transfer_syntaxes() -> list[str]:
    """Our accepted syntaxes, minus compressed ones no installed decoder can handle."""
    accepted = [str(ts) for ts in UNCOMPRESSED]
    for ts in LOSSLESS_COMPRESSED:
        try:
            available = get_decoder(ts).is_available
        except (NotImplementedError, ValueError):
            available = False
        if available:
            accepted.append(str(ts))
        else:
            log.warning("transfer syntax %s not offered: no decoder installed", ts.name)
    return accepted


def storage_contexts(accept_all_storage: bool) -> list[PresentationContext]:
    """Verification plus every storage SOP class, or CT Image / Enhanced CT only."""
    syntaxes = decodable_transfer_syntaxes()
    classes = (
        [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]
        if accept_all_storage
        else sorted(CT_SOP_CLASSES)
    )
    contexts = [
        build_context(
            Verification, [str(dcm_uid.ExplicitVRLittleEndian), str(dcm_uid.ImplicitVRLittleEndian)]
        )
    ]
    contexts += [build_context(sop_class, syntaxes) for sop_class in classes]
    return contexts


def accepted_sop_classes(accept_all_storage: bool) -> frozenset[str] | None:
    """None means any storage class we negotiated; otherwise the explicit allow-list."""
    return None if accept_all_storage else CT_SOP_CLASSES
