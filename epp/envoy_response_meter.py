"""The Lua script Envoy runs, in ``--response-body-mode LOGGED``, to measure responses.

Sending every response chunk to epp costs a gRPC message each, most of epp's CPU per
request. In LOGGED mode Envoy measures what epp wants from the body itself, as it
passes: the time of the first token (the first body byte; in a Responses API stream,
which opens with ``event: response.created``, the first ``.delta`` event) and the
``usage`` object near the body's end. The script puts both in the request's dynamic
metadata, and Envoy's gRPC access log, which batches many requests into one message,
brings them to epp with the status, the body size and the request id
(:mod:`epp.extproc.access_log`). It hooks responses only: no work on the request path.

epp tells the script, through the request's dynamic metadata
(:data:`BODY_UNMETERED_KEY`), to leave alone the body of a stream that cannot carry
usage; Envoy's own time of the body's first byte (the access log's custom tag, as in
TIMED) then times its first token.

Per chunk the script copies at most the chunk's last :data:`USAGE_WINDOW_BYTES` into a
window of the body's end and searches nothing (once the first token is seen); after
the last chunk it looks for the last key ``"usage"`` in that window (a JSON string
cannot hold those bytes unescaped, so generated text never matches) and keeps at most
:data:`USAGE_MAX_BYTES` from it on. Searching every chunk, as it did before, cost Envoy
about 1.5 times as much (``benchmarks/bench_response_meter.py``: 1.30 against 0.83 ms
per 100-event stream). Envoy's Lua clock has millisecond resolution, so time to
first token is measured to the millisecond.
"""

from __future__ import annotations

__all__ = [
    "BODY_CHUNK_BYTES",
    "BODY_CHUNK_METADATA",
    "BODY_UNMETERED_KEY",
    "FIRST_BODY_US_TAG",
    "FIRST_BODY_US_VALUE",
    "FIRST_TOKEN_MS_KEY",
    "HEADERS_LUA_SOURCE",
    "LUA_SOURCE",
    "METADATA_NAMESPACE",
    "RESPONSE_HEADERS_KEY",
    "RESPONSE_HEADERS_METADATA",
    "RESPONSE_HEADERS_SKIPPED",
    "RESPONSE_READINGS_METADATA",
    "USAGE_KEY",
    "USAGE_MAX_BYTES",
    "USAGE_WINDOW_BYTES",
]

# gRPC metadata on the routing filter's streams (OBSERVED, LOGGED and TIMED) that says
# the response's readings come later from elsewhere (the observer or the access log),
# so a routing stream that ends first waits for them, from the very first request.
RESPONSE_READINGS_METADATA = "x-epp-response-readings"
# gRPC metadata on the routing filter's streams (LOGGED and TIMED in the bootstrap
# `epp envoy-config` prints), value RESPONSE_HEADERS_SKIPPED: Envoy sends this stream no
# response headers (one gRPC message each way less per request). epp then puts the
# headers it adds to the response into the request's dynamic metadata
# (RESPONSE_HEADERS_KEY), which a Lua script of the bootstrap copies onto the response,
# and learns the status and the serving endpoint from the access log entry.
RESPONSE_HEADERS_METADATA = "x-epp-response-headers"
RESPONSE_HEADERS_SKIPPED = "skipped"
# gRPC metadata on the routing filter's streams of the bootstrap `epp envoy-config`
# prints: the largest body chunk this Envoy takes back in one streamed_response. Without
# it epp keeps to the reference's 62,000 bytes ("certain Envoy implementations" cap a
# streamed chunk at 64 KiB); with it a 400 KB body goes back in one message instead of
# seven, which cut epp's CPU for such a request by 12-30 % (benchmarks/overhead.py).
BODY_CHUNK_METADATA = "x-epp-body-chunk-bytes"
BODY_CHUNK_BYTES = 1 << 20

# Where the script leaves its readings, in the request's dynamic metadata.
METADATA_NAMESPACE = "epp.response"
FIRST_TOKEN_MS_KEY = "first_token_ms"  # Unix time in ms of the first token
USAGE_KEY = "usage"  # the body from its last "usage" key on, cut at USAGE_MAX_BYTES
USAGE_MAX_BYTES = 4096  # a usage object is a few hundred bytes
# How far from the body's end the script looks for the usage key: a stream's usage event
# is its last but [DONE]; in a JSON body only null fields follow usage unless the request
# asked for prompt logprobs or token ids, whose usage is then not read.
USAGE_WINDOW_BYTES = 8192
# Set (true) by epp, in the same namespace, on a request whose body cannot hold what
# the script looks for: a chat/completions stream that did not ask for its usage, whose
# first body byte is its first token. The script then leaves the body alone (its
# per-chunk work is most of what LOGGED costs Envoy beyond TIMED), and the access log's
# FIRST_BODY_US_TAG times the first token.
BODY_UNMETERED_KEY = "body_unmetered"

# Set by epp, in the same namespace, when Envoy skips response headers on the routing
# stream (RESPONSE_HEADERS_METADATA): a map of header name to value for the script to set
# on the response (a session token, the model fallback or selected model header).
RESPONSE_HEADERS_KEY = "response_headers"

# ``--response-body-mode TIMED`` runs no meter: Envoy's access log itself carries, as a
# custom tag, the microseconds from the request's first byte to the response body's
# first byte (the US_RX_BODY_BEG time point, Envoy >= 1.37). A model server sends its
# headers before it has a token and the body with the first one, so that is the time
# to first token, except in a Responses API stream, whose body opens with
# response.created before any token.
FIRST_BODY_US_TAG = "epp.first_body_us"
FIRST_BODY_US_VALUE = "%COMMON_DURATION(DS_RX_BEG:US_RX_BODY_BEG:us)%"

# Sets the headers epp asked for (RESPONSE_HEADERS_KEY) before the headers go on: the
# script must do it before it reads the first body chunk.
_SET_HEADERS_LUA = f"""\
local function set_headers(handle, told)
  local wanted = told["{RESPONSE_HEADERS_KEY}"]
  if wanted == nil then return end
  local headers = handle:headers()
  for name, value in pairs(wanted) do headers:replace(name, value) end
end"""

# TIMED mode with response headers skipped: only the headers, no body work (a script
# with no envoy_on_request costs the request path nothing).
HEADERS_LUA_SOURCE = f"""\
local NAMESPACE = "{METADATA_NAMESPACE}"
{_SET_HEADERS_LUA}
function envoy_on_response(handle)
  local told = handle:streamInfo():dynamicMetadata():get(NAMESPACE)
  if told ~= nil then set_headers(handle, told) end
end
"""

LUA_SOURCE = f"""\
local NAMESPACE = "{METADATA_NAMESPACE}"
local KEY = '"usage"'
local DELTA = '.delta"'
local RESPONSES_STREAM = "event: response."
local CAP = {USAGE_MAX_BYTES}
local WINDOW = {USAGE_WINDOW_BYTES}
-- Bytes kept from the end of one chunk so a marker split across two is still found.
local CARRY = 6

{_SET_HEADERS_LUA}
function envoy_on_response(handle)
  local told = handle:streamInfo():dynamicMetadata():get(NAMESPACE)
  if told ~= nil then
    set_headers(handle, told)
    if told["{BODY_UNMETERED_KEY}"] then return end
  end
  local content_type = handle:headers():get("content-type") or ""
  local streamed = content_type:find("event-stream", 1, true) ~= nil
  local marker, decided = nil, false
  local first, carry = nil, ""
  -- The body's end: the last pieces of chunks, at least WINDOW bytes (or all of it),
  -- in a table, joined once after the last chunk, when usage is looked for. Never a
  -- string grown chunk by chunk: LuaJIT interns every string it makes, and a growing
  -- one costs a copy and a hash of the whole each time (tried: Envoy's CPU per request
  -- went from 5.8 to 9.9 ms on the routing benchmark).
  local pieces, oldest, count, kept = {{}}, 1, 0, 0
  for chunk in handle:bodyChunks() do
    local length = chunk:length()
    if length > 0 then
      if first == nil then
        local data = chunk:getBytes(0, length)
        if not decided then
          decided = true
          -- A Responses API stream opens with response.created (then .in_progress),
          -- sent before any token is generated: its first token is the first .delta.
          if streamed and data:sub(1, #RESPONSES_STREAM) == RESPONSES_STREAM then marker = DELTA end
        end
        if marker == nil or data:find(marker, 1, true)
            or (carry .. data:sub(1, CARRY)):find(marker, 1, true) then
          first = handle:timestamp()
        else
          carry = (carry .. data):sub(-CARRY)
        end
      end
      local take = length < WINDOW and length or WINDOW
      count = count + 1
      pieces[count] = chunk:getBytes(length - take, take)
      kept = kept + take
      while kept - #pieces[oldest] >= WINDOW do
        kept = kept - #pieces[oldest]
        pieces[oldest] = nil
        oldest = oldest + 1
      end
      if oldest > 256 then  -- now and then a fresh table: a long stream's stays small
        local live = {{}}
        for i = oldest, count do live[i - oldest + 1] = pieces[i] end
        pieces, count, oldest = live, count - oldest + 1, 1
      end
    end
  end
  local tail = table.concat(pieces, "", oldest, count)
  local last, at = nil, 0
  repeat
    at = tail:find(KEY, at + 1, true)
    if at then last = at end
  until not at
  -- Objects taken before the chunks were read are out of scope by now: ask again.
  local metadata = handle:streamInfo():dynamicMetadata()
  if first ~= nil then metadata:set(NAMESPACE, "{FIRST_TOKEN_MS_KEY}", first) end
  if last ~= nil then metadata:set(NAMESPACE, "{USAGE_KEY}", tail:sub(last, last + CAP - 1)) end
end
"""
