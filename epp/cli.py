"""The ``epp`` command: ``serve``, ``sim``, ``demo`` and ``envoy-config``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from epp import __version__

__all__ = ["main"]


_TOP_LEVEL_OPTIONS = frozenset({"-h", "--help", "--version"})


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0].startswith("-") and arguments[0] not in _TOP_LEVEL_OPTIONS:
        # The reference EPP's image runs the picker with flags alone, and its Helm chart
        # passes them so (--pool-name ...): without a command, epp serves.
        arguments.insert(0, "serve")
    parser = argparse.ArgumentParser(
        prog="epp", description="Endpoint Picker for LLM inference (Envoy ext_proc)."
    )
    parser.add_argument("--version", action="version", version=f"epp {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the ext_proc endpoint picker")
    from epp.config import add_serve_arguments

    add_serve_arguments(serve)

    sim = commands.add_parser("sim", help="run simulated vLLM model servers")
    # The simulator's own CLI (vllm-sim), so that both commands take the same arguments.
    from vllm_sim.cli import configure_parser

    configure_parser(sim)

    demo = commands.add_parser(
        "demo", help="run a local stack: Envoy, epp and three simulated vLLM pods"
    )
    from epp.demo import configure_parser as configure_demo

    configure_demo(demo)

    envoy = commands.add_parser(
        "envoy-config", help="print the Envoy bootstrap that puts epp in front of model servers"
    )
    from epp.envoy_config import RESPONSE_BODY_MODES

    envoy.add_argument("--listen-port", type=int, default=8080)
    envoy.add_argument("--admin-port", type=int, default=9901)
    envoy.add_argument("--epp-host", default="127.0.0.1")
    envoy.add_argument("--epp-port", type=int, default=9002)
    envoy.add_argument(
        "--more-epp-port",
        type=int,
        action="append",
        default=[],
        metavar="PORT",
        help="another epp replica on --epp-host (active-active, epp serve "
        "--sync-redis-url); Envoy spreads routing streams over them all; repeatable",
    )
    envoy.add_argument(
        "--body-mode",
        choices=("FULL_DUPLEX_STREAMED", "BUFFERED"),
        default=None,
        help="how request bodies reach epp (default FULL_DUPLEX_STREAMED; BUFFERED with "
        "--fail-open, which Envoy cannot do in full duplex)",
    )
    envoy.add_argument(
        "--response-body-mode",
        choices=RESPONSE_BODY_MODES,
        default="LOGGED",
        help="LOGGED: Envoy measures time to first token and reads usage itself "
        "(a Lua filter) and its gRPC access log tells epp, many requests per "
        "message; TIMED: no Lua meter, the access log brings Envoy's own time of "
        "the first body byte as time to first token, and no usage; OBSERVED: a "
        "second, observing ext_proc filter copies response bodies to epp (Envoy never "
        "waits for it; ~1.5x LOGGED's CPU); "
        "FULL_DUPLEX_STREAMED: responses stream through epp's routing stream "
        "(also restores rewritten model names, strips --inject-stream-usage's "
        "event; ~2x LOGGED's CPU); NONE: bodies never reach epp (no usage or TTFT)",
    )
    envoy.add_argument(
        "--send-response-headers",
        action="store_true",
        help="LOGGED and TIMED: send response headers to epp, as the other modes do, "
        "instead of skipping them (a Lua script then sets epp's response headers, and "
        "the access log brings the status); needed by epp serve "
        "--enable-conformance-hooks, and to count a pod's 5xx before its client sees it",
    )
    envoy.add_argument(
        "--fail-open",
        action="append",
        default=[],
        metavar="HOST:PORT[,HOST:PORT...]",
        help="when epp is down or fails, route round-robin over these model servers "
        "(the pool) instead of answering 503; repeatable",
    )
    envoy.add_argument(
        "--model-route",
        action="append",
        default=[],
        metavar="MODEL=PORT",
        help="a gateway of several pools: a route for requests whose x-gateway-model-name is "
        "MODEL, whose endpoint the epp on --epp-host:PORT picks; the epp on --epp-port is "
        "then the body-based router (epp serve --body-based-routing) that sets the header "
        '(and chooses the model of "model": "auto"). Repeatable; needs '
        "--response-body-mode NONE or FULL_DUPLEX_STREAMED",
    )
    envoy.add_argument(
        "--epp-tls",
        action="store_true",
        help="dial epp with TLS (epp serve --secure-serving); needs "
        "--epp-ca-file or --epp-tls-insecure-skip-verify",
    )
    envoy.add_argument(
        "--epp-ca-file",
        metavar="PATH",
        help="verify epp's certificate against this CA bundle (PEM, a path "
        "as Envoy will see it); implies --epp-tls",
    )
    envoy.add_argument(
        "--epp-server-name",
        metavar="NAME",
        help="with --epp-ca-file: send NAME as SNI and require it among the "
        "certificate's subject alternative names",
    )
    envoy.add_argument(
        "--epp-tls-insecure-skip-verify",
        action="store_true",
        help="TLS to epp without verifying its certificate, as gateways "
        "dial the picker's self-signed one; implies --epp-tls",
    )

    args = parser.parse_args(arguments)
    if args.command == "serve":
        return _serve(args, arguments)
    if args.command == "sim":
        from vllm_sim.cli import run

        return run(args)
    if args.command == "demo":
        from epp.demo import run as run_demo

        return run_demo(args)
    if args.command == "envoy-config":
        return _envoy_config(args, envoy)
    parser.error(f"unknown command {args.command}")
    return 2


def _envoy_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from epp.envoy_config import EnvoyPorts, envoy_bootstrap, render_bootstrap

    if problem := _epp_tls_problem(args):
        parser.error(problem)
    ports = EnvoyPorts(
        listen_port=args.listen_port,
        admin_port=args.admin_port,
        epp_host=args.epp_host,
        epp_port=args.epp_port,
        more_epp_ports=tuple(args.more_epp_port),
    )
    fail_open = [part for given in args.fail_open for part in given.split(",") if part]
    model_routes: dict[str, int] = {}
    for given in args.model_route:
        model, _, port = given.rpartition("=")
        if not model or not port.isdigit():
            parser.error(f"--model-route takes MODEL=PORT, not {given!r}")
        model_routes[model] = int(port)
    body_mode = args.body_mode or ("BUFFERED" if fail_open else "FULL_DUPLEX_STREAMED")
    try:
        bootstrap = envoy_bootstrap(
            ports,
            body_mode=body_mode,
            response_body_mode=args.response_body_mode,
            epp_tls=args.epp_tls or args.epp_tls_insecure_skip_verify,
            epp_ca_file=args.epp_ca_file,
            epp_server_name=args.epp_server_name,
            fail_open=fail_open,
            model_routes=model_routes or None,
            send_response_headers=args.send_response_headers,
        )
    except ValueError as exc:
        parser.error(str(exc))
    sys.stdout.write(render_bootstrap(bootstrap))
    return 0


def _epp_tls_problem(args: argparse.Namespace) -> str | None:
    """Why the TLS flags do not say how to trust epp, or None when they do.

    ``--epp-tls`` alone is refused rather than verified against the system CAs: epp's
    default certificate is self-signed, so that would build a gateway whose every request
    fails at run time; choosing here costs one flag.
    """
    if args.epp_ca_file and args.epp_tls_insecure_skip_verify:
        return "--epp-ca-file and --epp-tls-insecure-skip-verify contradict each other"
    if args.epp_server_name and not args.epp_ca_file:
        return (
            "--epp-server-name is checked against epp's verified certificate: "
            "add --epp-ca-file PATH"
        )
    if args.epp_tls and not (args.epp_ca_file or args.epp_tls_insecure_skip_verify):
        return (
            "--epp-tls needs to know how to trust epp's certificate: add --epp-ca-file "
            "PATH (the CA that signed it), or --epp-tls-insecure-skip-verify to accept "
            "any certificate (epp's self-signed default, as gateways do)"
        )
    return None


def _serve(args: argparse.Namespace, arguments: Sequence[str]) -> int:
    import dataclasses
    import logging

    from epp.grpc_env import GRPC_EXPERIMENTS, apply_grpc_defaults

    # Before anything imports grpc, which reads its environment once, at import.
    grpc_defaults_applied = apply_grpc_defaults()

    import uvloop

    from epp.config import (
        ConfigError,
        build_model_selector,
        build_scheduler_from_config,
        check_endpoint_source,
        load_config,
    )
    from epp.observability.logging import configure_logging
    from epp.scheduling.errors import SchedulerConfigError
    from epp.server import serve
    from epp.sync.redis_sync import default_replica_id
    from epp.workers import supervise, worker_index

    try:
        config = load_config(args)
        scheduler = build_scheduler_from_config(config)
        selector = build_model_selector(config)
        check_endpoint_source(config)
    except (ConfigError, SchedulerConfigError) as exc:
        print(f"epp: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level, config.log_format)
    if grpc_defaults_applied:
        logging.getLogger("epp").info(
            "gRPC: GRPC_EXPERIMENTS=%s (epp's default; set GRPC_EXPERIMENTS to choose)",
            GRPC_EXPERIMENTS,
        )
    workers = config.server.workers
    index = worker_index()
    if workers > 1 and index is None:
        return supervise(arguments, workers, graceful_timeout_s=config.server.graceful_timeout_s)
    if workers > 1 and index is not None:
        # Worker i: its own /metrics port (counters are per process) and replica name.
        server = config.server
        config = dataclasses.replace(
            config,
            server=dataclasses.replace(
                server, metrics_port=server.metrics_port + index if server.metrics_port else 0
            ),
            sync=dataclasses.replace(
                config.sync, replica_id=f"{config.sync.replica_id or default_replica_id()}-w{index}"
            ),
        )
    for flag, value, why in config.ignored_flags:
        logging.getLogger("epp").warning(
            "ignoring %s=%s (a reference-EPP flag): %s", flag, value, why
        )
    try:
        uvloop.run(serve(config, scheduler=scheduler, selector=selector))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        logging.getLogger("epp").error("cannot serve: %s", exc)
        return 1
    return 0
