"""Session affinity through real Envoy: the token epp sets on a response brings the
client's next requests back to the same pod, whichever way the response's headers are
set (epp's answer to the response headers, or a Lua script told in metadata)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.integration.helpers import chat
from tests.integration.resilience import Rig

TOKEN = "x-session-token"
CONFIG = """\
apiVersion: epp.dev/v1alpha1
kind: EndpointPickerConfig
plugins:
  - {type: session-affinity-scorer}
  - {type: inflight-load-scorer}
  - {type: max-score-picker}
schedulingProfiles:
  - name: default
    plugins:
      - {pluginRef: session-affinity-scorer, weight: 100}
      - {pluginRef: inflight-load-scorer, weight: 1}
      - {pluginRef: max-score-picker}
"""


# NONE: epp answers the response headers; LOGGED and TIMED skip them (the meter's
# script, or TIMED's headers-only one, sets the token).
@pytest.mark.parametrize("mode", ["NONE", "LOGGED", "TIMED"])
def test_the_session_token_brings_a_client_back_to_its_pod(
    rig: Rig, tmp_path: Path, mode: str
) -> None:
    pods = rig.sims("sim", ["m", "m", "m"])
    config = tmp_path / "epp.yaml"
    config.write_text(CONFIG)
    url = rig.start_envoy(
        rig.start_epp(dict.fromkeys(pods, "m"), "--config-file", str(config)),
        response_body_mode=mode,
    )
    with httpx.Client(base_url=url, timeout=30) as client:

        def post(headers: dict[str, str]) -> httpx.Response:
            response = client.post(
                "/v1/chat/completions", json=chat("m", "hi", max_tokens=2), headers=headers
            )
            assert response.status_code == 200, response.text
            assert response.headers.get(TOKEN), "every response carries its pod's token"
            return response

        # Without a token, idle pods tie and the picker draws among them: 30 requests
        # all on one pod would happen by chance once in 10**14 runs.
        assert len({post({}).headers["x-sim-pod"] for _ in range(30)}) > 1
        first = post({})
        token, pod = first.headers[TOKEN], first.headers["x-sim-pod"]
        for _ in range(30):
            again = post({TOKEN: token})
            assert again.headers["x-sim-pod"] == pod
            assert again.headers[TOKEN] == token
