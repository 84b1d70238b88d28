"""A client of Envoy's rate limit service that is not ours, for ratelimitd's tests.

Python grpcio with stubs that grpcio-tools compiled from the .proto files shipped in the
envoy-types crate (scripts/python-rls-client.sh makes the venv and the stubs). Run as

    PYTHONPATH=VENV/stubs VENV/bin/python rls_client.py ADDR

It reads one JSON document from stdin, {"calls": [...]}, each call one of

    {"rls": {"domain": "edge",
             "descriptors": [{"entries": [["key", "value"], ...],
                              "hits_addend": 3,           (optional, UInt64Value: 0 is sent as set)
                              "is_negative_hits": false,  (optional)
                              "limit": {"requests_per_unit": 5, "unit": "SECOND"}}],  (optional)
             "hits_addend": 0}}                           (optional)
    {"health": "service name, or empty for the whole server"}

and prints one JSON document to stdout, {"results": [...]}, one result per call in order:

    {"overall_code": "OK", "statuses": [{"code": "OK",
        "current_limit": null | {"name": str, "requests_per_unit": int, "unit": "SECOND"},
        "limit_remaining": int, "duration_until_reset_ms": null | int}],
     "response_headers_to_add": [[key, value], ...]}
    {"status": "SERVING" | "NOT_SERVING" | "SERVICE_UNKNOWN" | "UNKNOWN"}
    {"error": {"code": "UNAVAILABLE", "details": str}}   (any gRPC error, for that call only)

Exit status 0 once the results are printed (whatever the calls returned); 2 for a bad
command line or input document, with the reason on stderr.
"""

import json
import sys

try:
    import grpc
    from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
    from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
    from envoy.type.v3 import ratelimit_unit_pb2
    from grpc_health.v1 import health_pb2, health_pb2_grpc
except ImportError as e:
    sys.exit(
        f"rls_client.py: {e}; run it with the venv's python and PYTHONPATH=VENV/stubs "
        "(scripts/python-rls-client.sh VENV ENVOY_TYPES_DIR makes both)"
    )

TIMEOUT_S = 5.0


class BadInput(Exception):
    pass


def expect(cond, what):
    if not cond:
        raise BadInput(what)


def only_keys(obj, allowed, where):
    expect(isinstance(obj, dict), f"{where} must be an object")
    extra = set(obj) - set(allowed)
    expect(not extra, f"{where} has unknown keys {sorted(extra)}")


def is_uint(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def descriptor(d, where):
    only_keys(d, ("entries", "hits_addend", "is_negative_hits", "limit"), where)
    entries = d.get("entries")
    expect(isinstance(entries, list), f"{where}.entries must be a list")
    out = ratelimit_pb2.RateLimitDescriptor()
    for i, e in enumerate(entries):
        expect(
            isinstance(e, list) and len(e) == 2 and all(isinstance(s, str) for s in e),
            f"{where}.entries[{i}] must be [key, value] strings",
        )
        out.entries.add(key=e[0], value=e[1])
    if "hits_addend" in d:
        expect(is_uint(d["hits_addend"]), f"{where}.hits_addend must be an unsigned integer")
        # A wrapper: setting it marks it present even when it is 0.
        out.hits_addend.value = d["hits_addend"]
    if "is_negative_hits" in d:
        expect(isinstance(d["is_negative_hits"], bool), f"{where}.is_negative_hits must be a boolean")
        out.is_negative_hits = d["is_negative_hits"]
    if "limit" in d:
        limit = d["limit"]
        only_keys(limit, ("requests_per_unit", "unit"), f"{where}.limit")
        expect(is_uint(limit.get("requests_per_unit")), f"{where}.limit.requests_per_unit must be an unsigned integer")
        try:
            unit = ratelimit_unit_pb2.RateLimitUnit.Value(limit.get("unit"))
        except (ValueError, TypeError):
            raise BadInput(f"{where}.limit.unit must be a RateLimitUnit name such as SECOND")
        out.limit.requests_per_unit = limit["requests_per_unit"]
        out.limit.unit = unit
    return out


def rls_request(r, where):
    only_keys(r, ("domain", "descriptors", "hits_addend"), where)
    expect(isinstance(r.get("domain", ""), str), f"{where}.domain must be a string")
    descriptors = r.get("descriptors", [])
    expect(isinstance(descriptors, list), f"{where}.descriptors must be a list")
    req = rls_pb2.RateLimitRequest(domain=r.get("domain", ""))
    for i, d in enumerate(descriptors):
        req.descriptors.append(descriptor(d, f"{where}.descriptors[{i}]"))
    addend = r.get("hits_addend", 0)
    expect(is_uint(addend), f"{where}.hits_addend must be an unsigned integer")
    req.hits_addend = addend
    return req


def parse(doc):
    """Checks the whole input before any call is made: ("rls", request) or ("health", name)."""
    only_keys(doc, ("calls",), "the input")
    calls = doc.get("calls")
    expect(isinstance(calls, list), "the input's calls must be a list")
    parsed = []
    for i, call in enumerate(calls):
        where = f"calls[{i}]"
        expect(isinstance(call, dict) and len(call) == 1, f"{where} must be an object with one key, rls or health")
        if "rls" in call:
            parsed.append(("rls", rls_request(call["rls"], f"{where}.rls")))
        elif "health" in call:
            expect(isinstance(call["health"], str), f"{where}.health must be a string")
            parsed.append(("health", call["health"]))
        else:
            raise BadInput(f"{where} must be an object with one key, rls or health")
    return parsed


def header_value(h):
    # HeaderValue carries either value or, for non-UTF-8 values, raw_value.
    if not h.value and h.raw_value:
        return h.raw_value.decode("utf-8", errors="replace")
    return h.value


def rls_result(resp):
    Code = rls_pb2.RateLimitResponse.Code
    Unit = rls_pb2.RateLimitResponse.RateLimit.Unit
    statuses = []
    for s in resp.statuses:
        current = None
        if s.HasField("current_limit"):
            current = {
                "name": s.current_limit.name,
                "requests_per_unit": s.current_limit.requests_per_unit,
                "unit": Unit.Name(s.current_limit.unit),
            }
        until_reset = None
        if s.HasField("duration_until_reset"):
            until_reset = s.duration_until_reset.ToMilliseconds()
        statuses.append(
            {
                "code": Code.Name(s.code),
                "current_limit": current,
                "limit_remaining": s.limit_remaining,
                "duration_until_reset_ms": until_reset,
            }
        )
    return {
        "overall_code": Code.Name(resp.overall_code),
        "statuses": statuses,
        "response_headers_to_add": [[h.key, header_value(h)] for h in resp.response_headers_to_add],
    }


def main():
    if len(sys.argv) != 2:
        print("usage: rls_client.py ADDR  (reads {\"calls\": [...]} on stdin)", file=sys.stderr)
        return 2
    try:
        calls = parse(json.load(sys.stdin))
    except (BadInput, ValueError) as e:
        print(f"rls_client.py: bad input: {e}", file=sys.stderr)
        return 2

    # One plaintext channel for every call. No HTTP proxy: the server is always local, and a
    # proxy set in the environment must not sit between the test and it.
    with grpc.insecure_channel(sys.argv[1], options=[("grpc.enable_http_proxy", 0)]) as channel:
        rls = rls_pb2_grpc.RateLimitServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        results = []
        for kind, arg in calls:
            try:
                if kind == "rls":
                    results.append(rls_result(rls.ShouldRateLimit(arg, timeout=TIMEOUT_S)))
                else:
                    resp = health.Check(health_pb2.HealthCheckRequest(service=arg), timeout=TIMEOUT_S)
                    results.append(
                        {"status": health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)}
                    )
            except grpc.RpcError as e:
                results.append({"error": {"code": e.code().name, "details": e.details() or ""}})
    json.dump({"results": results}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
