"""Passive health, model fallback and overload protection through real Envoy, epp and
simulated pods. Every test starts its own stack (pods, epp with its flags, Envoy)."""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.integration.helpers import chat
from tests.integration.resilience import Rig, Traffic, set_faults, wait_until


def test_a_dead_endpoint_is_seen_through_envoys_local_503(rig: Rig) -> None:
    (pod,) = rig.sims("sim", ["m"])
    # Metrics never go stale and failed scrapes never make the pod unready: only passive
    # health can tell that it is gone.
    url = rig.start_envoy(
        rig.start_epp(
            {pod: "m"}, "--unready-after-failures", "1000000", "--metrics-staleness-threshold", "1h"
        )
    )
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.post("/v1/chat/completions", json=chat("m", "hi")).status_code == 200
        assert rig.metric("epp_endpoint_unhealthy", pod) == 0
        rig.processes[0].stop()
        response = client.post("/v1/chat/completions", json=chat("m", "anyone?"))
        # Envoy's own answer to a refused connection, which ext_proc sees as response
        # headers with :status 503: the endpoint is in a back-off before the client knows.
        assert response.status_code == 503
        assert "x-sim-pod" not in response.headers
        assert response.headers.get("content-type") != "application/json"  # not epp's
        assert rig.metric("epp_endpoint_unhealthy", pod) == 1
        assert rig.metric("epp_endpoint_ejections_total") == 1


def test_a_failing_endpoint_is_avoided_with_growing_backoff_then_healed(rig: Rig) -> None:
    bad, good = rig.sims("sim", ["m", "m"])
    url = rig.start_envoy(
        rig.start_epp(
            {bad: "m", good: "m"}, "--failure-backoff", "1s", "--failure-max-backoff", "10s"
        )
    )
    first, second = "avoiding it for 1.0s (ejection 1 in a row)", "for 2.0s (ejection 2 in a row)"
    with httpx.Client(base_url=url, timeout=30) as client:

        def post() -> httpx.Response:
            return client.post("/v1/chat/completions", json=chat("m", "hello", max_tokens=2))

        def until_bad_fails() -> None:
            """Requests until one reaches the failing pod; then it is avoided."""
            for _ in range(100):
                response = post()
                if response.status_code != 200:
                    assert response.status_code == 503
                    assert response.headers["x-sim-pod"] == bad
                    break
                assert response.headers["x-sim-pod"] == good
            else:
                pytest.fail("the failing pod got no request")
            # While the back-off lasts (still on after the response), only the good pod
            # serves: checked after each response, so the assertion does not race the clock.
            for _ in range(5):
                response = post()
                if rig.metric("epp_endpoint_unhealthy", bad) != 1:
                    break
                assert response.status_code == 200
                assert response.headers["x-sim-pod"] == good

        set_faults(bad, status=503)
        until_bad_fails()
        wait_until(lambda: rig.epp_log_count(first) == 1, "the first ejection")
        wait_until(lambda: rig.metric("epp_endpoint_unhealthy", bad) == 0, "the back-off to end")
        until_bad_fails()  # failed again after its back-off: the back-off doubles
        wait_until(lambda: rig.epp_log_count(second) == 1, "the second, longer ejection")

        set_faults(bad, status=None)
        wait_until(lambda: rig.metric("epp_endpoint_unhealthy", bad) == 0, "the back-off to end")
        wait_until(lambda: post().headers["x-sim-pod"] == bad, "the healed pod to serve")
        assert rig.epp_log_count("answered again (status 200); healthy") == 1

        # Healed: the next failure starts from the initial back-off again.
        set_faults(bad, status=500)
        for _ in range(100):
            if post().status_code == 500:
                break
        wait_until(lambda: rig.epp_log_count(first) == 2, "a fresh first ejection")


@pytest.mark.parametrize(
    ("mode", "body_mode"),
    [
        ("LOGGED", "FULL_DUPLEX_STREAMED"),
        ("TIMED", "BUFFERED"),
        ("LOGGED", "BUFFERED"),
        ("TIMED", "FULL_DUPLEX_STREAMED"),
    ],
)
def test_without_response_headers_the_access_log_counts_a_5xx_and_a_script_adds_headers(
    rig: Rig, mode: str, body_mode: str
) -> None:
    # LOGGED and TIMED as `epp envoy-config` prints them: Envoy sends epp no response
    # headers. The status comes with the access log entry, and epp's headers for the
    # client go through a Lua script (the meter's, or TIMED's headers-only one), told in
    # the metadata of the routing answer (on the request headers in full duplex, on the
    # body when buffered, whose body is rewritten for the fallback model).
    (big,) = rig.sims("sim-big", ["big"])
    (small,) = rig.sims("sim-small", ["small"])
    grpc_port = rig.start_epp(
        {big: "big", small: "small"},
        "--model-fallback",
        "big=small",
        "--failure-backoff",
        "1h",
        "--failure-max-backoff",
        "1h",
    )
    url = rig.start_envoy(grpc_port, response_body_mode=mode, body_mode=body_mode)
    set_faults(big, status=503)
    with httpx.Client(base_url=url, timeout=30) as client:
        failed = client.post("/v1/chat/completions", json=chat("big", "hi", max_tokens=2))
        assert failed.status_code == 503 and failed.headers["x-sim-pod"] == big
        # Counted once Envoy's entry arrives (batches go every 0.1 s), not before.
        wait_until(lambda: rig.metric("epp_endpoint_unhealthy", big) == 1, "the 503 counted")
        fell_back = client.post("/v1/chat/completions", json=chat("big", "hi", max_tokens=2))
        assert fell_back.status_code == 200 and fell_back.headers["x-sim-pod"] == small
        assert fell_back.headers["x-gateway-model-fallback"] == "big -> small"
        plain = client.post("/v1/chat/completions", json=chat("small", "hi", max_tokens=2))
        assert plain.status_code == 200 and "x-gateway-model-fallback" not in plain.headers
    wait_until(
        lambda: rig.metric("epp_endpoint_inflight_requests", small) == 0, "the load released"
    )


def test_a_client_that_leaves_before_the_response_does_not_count(rig: Rig) -> None:
    (pod,) = rig.sims("sim", ["m"], "--max-num-seqs", "1")
    url = rig.start_envoy(rig.start_epp({pod: "m"}))
    parts = urlsplit(url)
    body = httpx.Request("POST", "/", json=chat("m", "long", max_tokens=5000)).content
    with socket.create_connection((parts.hostname, parts.port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: test\r\n"
            b"content-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        wait_until(
            lambda: httpx.get(f"http://{pod}/sim/state").json()["running"] == 1,
            "the pod to work on the request",
        )
    # The client hung up before any response: epp releases the load and blames no one.
    wait_until(
        lambda: rig.metric("epp_endpoint_inflight_requests", pod) == 0, "the load to be released"
    )
    assert rig.metric("epp_endpoint_unhealthy", pod) == 0
    assert rig.metric("epp_endpoint_ejections_total") == 0


def test_stopping_a_models_only_pod_falls_back_to_another_model(rig: Rig) -> None:
    (big,) = rig.sims("sim-big", ["big"])
    small = rig.sims("sim-small", ["small", "small"])
    grpc_port = rig.start_epp(
        {big: "big", small[0]: "small", small[1]: "small"}, "--model-fallback", "big=small"
    )
    # Responses stream through epp, so their model is restored to the one asked for.
    url = rig.start_envoy(grpc_port, response_body_mode="FULL_DUPLEX_STREAMED")
    with Traffic(url, "big") as traffic:
        wait_until(lambda: traffic.served_by([big]) >= 20, "traffic to the big pod")
        before_stop = len(traffic.outcomes)
        rig.processes[0].stop()  # mid-run: requests in flight on it may fail
        wait_until(lambda: traffic.served_by(small) >= 40, "traffic to the fallback pods")
    outcomes = traffic.outcomes
    failures = [o for o in outcomes if o.status != 200]
    # Each client has at most one request in flight when the pod stops; once one fails,
    # epp has counted the failure before the client sees it, so no client fails twice.
    assert len(failures) <= traffic.clients, failures
    assert all(o.status == 200 and o.pod == big and not o.fallback for o in outcomes[:before_stop])
    fell_back = [o for o in outcomes if o.status == 200 and o.pod != big]
    assert fell_back and all(o.pod in small for o in fell_back)
    assert {o.fallback for o in fell_back} == {"big -> small"}
    assert {o.model for o in outcomes if o.status == 200} == {"big"}
    assert rig.metric(
        "epp_model_fallback_total", 'fallback_model_name="small",model_name="big"'
    ) >= len(fell_back)
    response = httpx.post(f"{url}/v1/chat/completions", json=chat("small", "hi"), timeout=30)
    assert response.status_code == 200 and "x-gateway-model-fallback" not in response.headers


def test_a_saturated_pool_sheds_sheddable_requests(rig: Rig, tmp_path: Path) -> None:
    pods = rig.sims("sim", ["m", "m"])
    config = tmp_path / "epp.yaml"
    config.write_text(
        "kind: EndpointPickerConfig\n"
        "objectives: {batch: -1, chat: 10}\n"
        "saturationDetector: {queueDepthThreshold: 5, kvCacheUtilThreshold: 0.8}\n"
        "admission: {retryAfter: 3s}\n"
    )
    url = rig.start_envoy(rig.start_epp(dict.fromkeys(pods, "m"), "--config-file", str(config)))
    with httpx.Client(base_url=url, timeout=30) as client:

        def post(objective: str | None) -> httpx.Response:
            headers = {"x-gateway-inference-objective": objective} if objective else {}
            return client.post(
                "/v1/chat/completions", json=chat("m", "hi", max_tokens=2), headers=headers
            )

        assert post("batch").status_code == 200  # not saturated: sheddable work runs
        for pod in pods:  # each pod reports 6 waiting requests: over the threshold of 5
            set_faults(pod, extra_waiting=6)
        wait_until(
            lambda: rig.metric("inference_pool_average_queue_size") >= 6, "epp to see the queues"
        )
        shed = post("batch")
        assert shed.status_code == 429
        assert shed.headers["retry-after"] == "3"
        assert shed.json()["error"]["code"] == "pool_saturated"
        assert "x-sim-pod" not in shed.headers
        for objective in ("chat", None, "unknown"):  # priority >= 0 still routes
            assert post(objective).status_code == 200, objective
        for pod in pods:
            set_faults(pod, extra_waiting=0)
        wait_until(lambda: post("batch").status_code == 200, "shedding to stop")
    assert rig.metric("inference_objective_request_error_total", "pool_saturated") >= 1


def test_the_inflight_cap_spreads_load_then_answers_429(rig: Rig) -> None:
    pods = rig.sims("sim", ["m", "m"])
    url = rig.start_envoy(
        rig.start_epp(
            dict.fromkeys(pods, "m"), "--endpoint-max-inflight", "1", "--retry-after", "2"
        )
    )
    long = chat("m", "a long answer", stream=True, max_tokens=5000)
    with httpx.Client(base_url=url, timeout=30) as client:
        held: list[str] = []
        with client.stream("POST", "/v1/chat/completions", json=long) as first:
            held.append(first.headers["x-sim-pod"])
            with client.stream("POST", "/v1/chat/completions", json=long) as second:
                held.append(second.headers["x-sim-pod"])
                assert sorted(held) == sorted(pods)  # the cap sent the second elsewhere
                refused = client.post("/v1/chat/completions", json=chat("m", "room?"))
                assert refused.status_code == 429
                assert refused.headers["retry-after"] == "2"
                assert refused.json()["error"]["code"] == "no_capacity"
        wait_until(
            lambda: (
                rig.metric("epp_endpoint_inflight_requests", pods[0]) == 0
                and rig.metric("epp_endpoint_inflight_requests", pods[1]) == 0
            ),
            "the held requests to end",
        )
        assert client.post("/v1/chat/completions", json=chat("m", "room?")).status_code == 200
