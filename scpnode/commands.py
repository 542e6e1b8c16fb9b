"""The subcommands: parse → build the few objects each needs → act. Heavy imports stay lazy."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scpnode.cli import (
    EXIT_FAILURE,
    EXIT_OK,
    UsageError,
    database_from,
    print_json,
    settings_from,
)
from scpnode.tables import print_table

Adder = Any  # argparse's private _SubParsersAction
WithConfig = Callable[[argparse.ArgumentParser], argparse.ArgumentParser]


def register(sub: Adder, with_config: WithConfig) -> None:
    with_config(sub.add_parser("serve", help="SCP + completion + workers + delivery")).set_defaults(
        handler=cmd_serve
    )
    p = with_config(sub.add_parser("worker", help="workers and delivery only (scale-out)"))
    p.add_argument("--burst", action="store_true", help="drain queued work, then exit")
    p.set_defaults(handler=cmd_worker)
    p = with_config(
        sub.add_parser(
            "receive", help="one more receiving process on serve's port (serve starts these)"
        )
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--listen-fd", type=int, help="serve's listening socket, inherited (how serve starts these)"
    )
    where.add_argument("--port", type=int, help="join serve's port instead (SO_REUSEPORT)")
    p.set_defaults(handler=cmd_receive)
    p = sub.add_parser("demo", help="self-contained run on synthetic studies")
    p.add_argument("--studies", type=int, default=2)
    p.add_argument("--slices", type=int, default=48)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--keep", type=Path, default=None, help="keep the run's files in this folder")
    p.set_defaults(handler=cmd_demo)
    _register_data(sub)
    _register_audit(sub, with_config)
    _register_models(sub)
    _register_deliveries(sub, with_config)
    from scpnode import console_cli

    console_cli.register(sub, with_config)
    p = with_config(sub.add_parser("echo", help="C-ECHO a configured destination"))
    p.add_argument("--destination", default=None)
    p.set_defaults(handler=cmd_echo)
    db = sub.add_parser("db", help="database maintenance").add_subparsers(
        dest="db_command", required=True, metavar="ACTION"
    )
    with_config(db.add_parser("upgrade", help="create or migrate the schema")).set_defaults(
        handler=cmd_db_upgrade
    )


def _register_data(sub: Adder) -> None:
    p = sub.add_parser("synth", help="write synthetic CT studies and ground_truth.csv")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--studies", type=_positive, default=4)
    p.add_argument("--slices", type=_positive, default=60)
    p.add_argument("--covid-fraction", type=_fraction, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=cmd_synth)
    p = sub.add_parser("simulate", help="a scanner: send synthetic studies over C-STORE")
    p.add_argument("--to", required=True, metavar="HOST:PORT", type=_address)
    p.add_argument("--called-aet", default="SCPNODE")
    p.add_argument("--calling-aet", default="SIMSCANNER")
    p.add_argument("--studies", type=_positive, default=2)
    p.add_argument("--slices", type=_positive, default=60)
    p.add_argument("--covid-fraction", type=_fraction, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=cmd_simulate)


def _register_audit(sub: Adder, with_config: WithConfig) -> None:
    audit = sub.add_parser("audit", help="what happened, and why").add_subparsers(
        dest="audit_command", required=True, metavar="ACTION"
    )
    p = with_config(audit.add_parser("studies", help="one row per study"))
    p.add_argument("--json", action="store_true")
    _study_filters(p)
    p.set_defaults(handler=cmd_audit_studies)
    p = with_config(audit.add_parser("show", help="one study in full"))
    p.add_argument("study_uid", metavar="STUDY_UID")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_audit_show)
    p = with_config(audit.add_parser("events", help="audit events, oldest first"))
    p.add_argument("--study", default=None, metavar="UID")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_audit_events)
    p = with_config(audit.add_parser("export", help="events as ATNA audit messages (JSON lines)"))
    p.add_argument("--study", default=None, metavar="UID")
    p.add_argument("--since", default=None, metavar="ISO8601", type=_instant)
    p.set_defaults(handler=cmd_audit_export)
    with_config(audit.add_parser("verify", help="check the audit hash chain")).set_defaults(
        handler=cmd_audit_verify
    )
    from scpnode import console_cli

    p = with_config(audit.add_parser("associations", help="incoming associations, newest first"))
    p.add_argument("--calling-aet", metavar="AET", default=None)
    p.add_argument("--outcome", default=None, choices=console_cli.association_outcomes())
    p.add_argument("--limit", type=_positive, default=50, help="at most this many rows (50)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=console_cli.cmd_audit_associations)


def _study_filters(p: argparse.ArgumentParser) -> None:
    """The filters of the console's Studies page (`audit_views.StudyFilter`)."""
    p.add_argument("--since", metavar="DATE|ISO8601", help="first instance at or after")
    p.add_argument("--until", metavar="DATE|ISO8601", help="before (a date: through that day)")
    p.add_argument("--calling-aet", metavar="AET", help="AE title that sent the first instance")
    p.add_argument(
        "--status",
        action="append",
        default=[],
        metavar="STATUS",
        choices=[s.value for s in _study_states()],
        help="repeat for several",
    )
    p.add_argument("--label", choices=["covid19", "non_covid19", "none"])
    p.add_argument("--min-p", type=_fraction, metavar="P")
    p.add_argument("--max-p", type=_fraction, metavar="P")
    p.add_argument(
        "--sort",
        default="received",
        choices=["received", "changed", "calling_aet", "status", "label", "probability"],
    )
    p.add_argument("--desc", action="store_true", help="newest (highest) first")
    p.add_argument("--limit", type=_positive, default=None, help="at most this many rows")


def _study_states() -> Any:
    from scpnode.domain import StudyState

    return StudyState


def _register_deliveries(sub: Adder, with_config: WithConfig) -> None:
    deliveries = sub.add_parser("deliveries", help="what was sent where").add_subparsers(
        dest="deliveries_command", required=True, metavar="ACTION"
    )
    p = with_config(deliveries.add_parser("list", help="one row per delivery"))
    p.add_argument("--state", choices=["pending", "delivered", "failed", "expired"])
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_deliveries_list)
    p = with_config(deliveries.add_parser("retry", help="re-queue failed deliveries"))
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("ids", nargs="*", type=int, default=[], metavar="ID")
    which.add_argument("--all-failed", action="store_true")
    p.set_defaults(handler=cmd_deliveries_retry)


def _register_models(sub: Adder) -> None:
    models = sub.add_parser("models", help="the model zoo").add_subparsers(
        dest="models_command", required=True, metavar="ACTION"
    )
    p = models.add_parser("list", help="architectures, input sizes, weights status")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_models_list)
    p = models.add_parser("train", help="train a registry model on a dataset (or --synthetic)")
    p.add_argument(
        "--synthetic",
        action="store_true",
        help="the CTnet-10 demo weights from synthetic phantoms, cached outside git",
    )
    p.add_argument("--model", help="registry name (scpnode models list)")
    p.add_argument("--data", type=Path, help="COVID-CT, folder-per-class or `scpnode synth` folder")
    p.add_argument("--out", type=Path, default=None, help="weights file (card written beside)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="--synthetic: retrain even if cached")
    p.add_argument("--epochs", type=_positive, default=None)
    p.add_argument("--batch-size", type=_positive, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--optimizer", choices=("adam", "rmsprop"), default=None)
    p.add_argument("--patience", type=_positive, default=5, help="early stopping (epochs)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument(
        "--pretrained",
        choices=("imagenet",),
        default=None,
        help="torchvision ImageNet weights from the local torch cache (no download)",
    )
    p.add_argument(
        "--checkpoint", type=Path, default=None, help="resume from / save to (default: <out>.ckpt)"
    )
    p.add_argument("--split", choices=("official", "random"), default="official")
    p.add_argument("--calibration", choices=("platt", "isotonic", "none"), default="platt")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--version", default="1", help="written into the card, the SR and the audit")
    p.add_argument("--positive", default=None, help="folder-per-class: the COVID-19 folder")
    p.set_defaults(handler=cmd_models_train)
    _register_evaluate(models)


def _register_evaluate(models: Adder) -> None:
    p = models.add_parser("evaluate", help="slice/study metrics with 95% CIs, figures, table")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="folder for table, JSON, figures")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--weights", type=Path, nargs="+", help="weights files (cards beside)")
    which.add_argument("--all", action="store_true", help="every model with weights")
    p.add_argument("--weights-dir", type=Path, default=None, help="--all: where to look")
    p.add_argument("--subset", choices=("test", "val", "train", "all"), default="test")
    p.add_argument("--split", choices=("official", "random"), default="official")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--allow-domain-shift", action="store_true")
    p.add_argument("--positive", default=None)
    p.set_defaults(handler=cmd_models_evaluate)


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def _instant(text: str) -> Any:
    from datetime import UTC, datetime

    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


# --- handlers ---------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from scpnode.node import Node

    return Node(settings_from(args)).run_until_signal()


def cmd_receive(args: argparse.Namespace) -> int:
    from scpnode.node import run_receiver

    return run_receiver(settings_from(args), args.port, args.listen_fd)


def cmd_worker(args: argparse.Namespace) -> int:
    import signal
    import threading

    from scpnode.worker import build_worker

    worker = build_worker(settings_from(args))
    if args.burst:
        worker.run_burst()
        return EXIT_OK
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    worker.run(stop)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from scpnode.demo import run_demo

    return run_demo(studies=args.studies, slices=args.slices, seed=args.seed, keep=args.keep)


def cmd_synth(args: argparse.Namespace) -> int:
    from scpnode.synth import synth

    specs = synth(
        args.out,
        studies=args.studies,
        slices=args.slices,
        covid_fraction=args.covid_fraction,
        seed=args.seed,
    )
    print(
        f"wrote {len(specs)} synthetic studies to {args.out} (ground truth: "
        f"{args.out / 'ground_truth.csv'})"
    )
    return EXIT_OK


def cmd_simulate(args: argparse.Namespace) -> int:
    from scpnode.simulate import simulate

    host, port = args.to
    report = simulate(
        host,
        port,
        called_aet=args.called_aet,
        calling_aet=args.calling_aet,
        studies=args.studies,
        slices=args.slices,
        covid_fraction=args.covid_fraction,
        seed=args.seed,
    )
    for line in report.lines():
        print(line)
    return EXIT_OK if report.all_stored else EXIT_FAILURE


def cmd_audit_studies(args: argparse.Namespace) -> int:
    from itertools import islice

    from scpnode.audit_views import StudyFilter, iter_studies, parse_bound

    try:
        found = StudyFilter(
            since=parse_bound(args.since) if args.since else None,
            until=parse_bound(args.until, end=True) if args.until else None,
            calling_aet=args.calling_aet, statuses=tuple(args.status), label=args.label,
            min_p=args.min_p, max_p=args.max_p,
        )  # fmt: skip
    except ValueError as exc:
        raise UsageError(f"audit studies: --since/--until: {exc}") from None
    with database_from(args).snapshot() as session:
        rows = list(islice(iter_studies(session, found, sort=args.sort, descending=args.desc),
                           args.limit))  # fmt: skip
    if args.json:
        print_json(rows)
        return EXIT_OK
    print_table(
        rows,
        [
            ("study_instance_uid", "STUDY"),
            ("calling_aet", "FROM"),
            ("received_instances", "N"),
            ("status", "STATUS"),
            ("label", "LABEL"),
            ("probability", "P"),
            ("model", "MODEL"),
            ("deliveries", "DELIVERIES"),
        ],
    )
    return EXIT_OK


def cmd_audit_show(args: argparse.Namespace) -> int:
    from scpnode.audit_views import show_study
    from scpnode.tables import print_study

    with database_from(args).snapshot() as session:
        study = show_study(session, args.study_uid)
    if study is None:
        print(f"scpnode: no study {args.study_uid}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print_json(study)
    else:
        print_study(study)
    return EXIT_OK


def cmd_audit_events(args: argparse.Namespace) -> int:
    from scpnode.audit_views import list_events

    with database_from(args).snapshot() as session:
        events = list_events(session, args.study)
    if args.json:
        print_json(events)
    else:
        print_table(
            events,
            [
                ("seq", "SEQ"),
                ("ts", "TIME"),
                ("kind", "EVENT"),
                ("study_instance_uid", "STUDY"),
                ("detail", "DETAIL"),
            ],
        )
    return EXIT_OK


def cmd_audit_export(args: argparse.Namespace) -> int:
    from datetime import datetime

    from scpnode.app import node_identity
    from scpnode.atna import json_lines
    from scpnode.audit_views import list_events

    settings = settings_from(args)
    with database_from(args).snapshot() as session:
        events = list_events(session, args.study)
    if args.since is not None:
        events = [e for e in events if datetime.fromisoformat(e["ts"]) >= args.since]
    node = node_identity(settings)
    for line in json_lines(events, node.ae_title, node.device_uid):
        print(line)
    return EXIT_OK


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from scpnode.audit import verify_chain

    with database_from(args).snapshot() as session:
        check = verify_chain(session)
    if check.ok:
        print(f"audit chain intact: {check.events} events")
        return EXIT_OK
    print(
        f"audit chain BROKEN at event {check.first_broken_seq}: {check.problem} "
        f"({check.events} events verified before it)"
    )
    return EXIT_FAILURE


def cmd_models_list(args: argparse.Namespace) -> int:
    from scpnode.models_cli import model_rows

    rows = model_rows()
    if args.json:
        print_json(rows)
    else:
        print_table(
            rows,
            [
                ("name", "NAME"),
                ("input_size", "INPUT"),
                ("parameters", "PARAMS"),
                ("weights", "WEIGHTS"),
            ],
        )
    return EXIT_OK


def cmd_models_train(args: argparse.Namespace) -> int:
    from scpnode import models_cli

    if args.synthetic == bool(args.model or args.data):
        raise UsageError("models train: give either --synthetic or --model NAME --data DIR")
    if args.synthetic:
        models_cli.train_synthetic(seed=args.seed, force=args.force)
        return EXIT_OK
    if not (args.model and args.data):
        raise UsageError("models train: --model and --data go together")
    return _zoo_errors(lambda: models_cli.train(args))


def cmd_models_evaluate(args: argparse.Namespace) -> int:
    from scpnode import models_cli

    def run() -> None:
        for path in models_cli.evaluate(args):
            print(path)

    return _zoo_errors(run)


def _zoo_errors(action: Callable[[], object]) -> int:
    """Data, weights and domain problems are the user's to fix: a message, no traceback."""
    from model_zoo.card import ModelCardError
    from model_zoo.datasets import DatasetError
    from model_zoo.paper_models import PretrainedWeightsMissing
    from model_zoo.registry import UnknownModelError
    from scpnode.zoo_eval import DomainShiftError

    try:
        action()
    except UnknownModelError as exc:
        raise UsageError(str(exc)) from None
    except (DatasetError, PretrainedWeightsMissing, DomainShiftError, ModelCardError) as exc:
        print(f"scpnode: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def cmd_deliveries_list(args: argparse.Namespace) -> int:
    from scpnode.delivery import list_deliveries

    with database_from(args).snapshot() as session:
        rows = list_deliveries(session, args.state)
    if args.json:
        print_json(rows)
    else:
        print_table(
            rows,
            [
                ("id", "ID"),
                ("study_instance_uid", "STUDY"),
                ("kind", "KIND"),
                ("destination", "TO"),
                ("status", "STATUS"),
                ("attempts", "N"),
                ("last_status", "DICOM"),
                ("last_error", "LAST ERROR"),
            ],
        )
    return EXIT_OK


def cmd_deliveries_retry(args: argparse.Namespace) -> int:
    import getpass

    from scpnode.clock import utcnow
    from scpnode.delivery import requeue

    if not args.ids and not args.all_failed:
        raise UsageError("deliveries retry: give delivery IDs or --all-failed")
    settings = settings_from(args)
    with database_from(args).session() as session:
        done = requeue(
            session,
            None if args.all_failed else args.ids,
            utcnow(),
            settings.delivery.max_age_h,
            f"cli:{getpass.getuser()}",
        )
    missing = sorted(set(args.ids) - set(done))
    print(f"re-queued {len(done)} deliveries" + (f": {done}" if done else ""))
    if missing:
        print(f"not re-queued (unknown, pending or delivered): {missing}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def cmd_echo(args: argparse.Namespace) -> int:
    from scpnode.send import Outcome, Peer, echo
    from scpnode.tls import client_tls

    settings = settings_from(args)
    destinations = [
        d for d in settings.destinations if args.destination is None or d.name == args.destination
    ]
    if not destinations:
        raise UsageError(
            f"destinations: no destination named {args.destination!r}"
            if args.destination
            else "destinations: none configured"
        )
    failed = 0
    for dest in destinations:
        peer = Peer(dest.ae_title, dest.host, dest.port, tls=client_tls(dest))
        result = echo(peer, settings.node.ae_title)
        over = " over TLS" if peer.tls else ""
        print(f"{dest.name} ({dest.ae_title}@{dest.host}:{dest.port}{over}): {result.detail}")
        failed += result.outcome != Outcome.DELIVERED
    return EXIT_FAILURE if failed else EXIT_OK


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from scpnode.app import open_database

    settings = settings_from(args)
    open_database(settings).dispose()
    print(f"database at the current schema: {settings.database.url}")
    return EXIT_OK
