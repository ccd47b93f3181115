"""CEL expressions evaluated by Google's CEL (cel-cpp, through cel-expr-python), for tests/cel.rs.

Reads {"mode": "flux" | "rule", "cases": [{"expr": "...", "data": {...}}, ...]} on stdin and
prints one result per case, in order: {"value": <result>} or {"error": "<why>"}.

- "flux": as Flux's kustomize-controller evaluates `healthCheckExprs` (fluxcd/pkg runtime/cel):
  parsed without declarations, the object's top-level fields (apiVersion, kind, metadata, spec,
  status) as variables, with the optional-types (`.?`, `orValue`), strings and encoders
  extensions; a result that is not a bool is an error.
- "rule": as kube-apiserver evaluates a CRD's `x-kubernetes-validations` rule: `self` is the value
  at the rule's place in the object, with the strings extension. Kubernetes' functions that
  cel-cpp lacks or has differently are registered below (KUBERNETES_FUNCTIONS); a rule using
  another Kubernetes-only function (`isURL`, `quantity`, …) fails to compile here, and that
  function is then to be added.
"""

import json
import re
import sys

from cel_expr_python import cel
from cel_expr_python.ext import ext_encoders, ext_optional, ext_strings

# Go's time.ParseDuration, which Kubernetes' duration() is (cel-go). cel-cpp's own duration() is
# absl's parser: it refuses `µs` and accepts up to 10,000 years, where Go refuses more than an
# int64 of nanoseconds. cel-cpp does not let a second `duration` be declared, so rules are
# evaluated with duration( spelled k8s_duration(, which returns the nanoseconds as an int: the
# rules only compare durations with durations.
UNITS = {"ns": 1, "us": 1000, "\u00b5s": 1000, "\u03bcs": 1000, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
MAX = 1 << 63


def go_parse_duration(text):
    orig, s, neg = text, text, False
    if s and s[0] in "-+":
        neg, s = s[0] == "-", s[1:]
    if s == "0":
        return 0
    if s == "":
        raise ValueError(f"time: invalid duration {orig!r}")
    total = 0
    while s:
        if not (s[0] == "." or s[0].isdigit() and s[0].isascii()):
            raise ValueError(f"time: invalid duration {orig!r}")
        i = 0
        value = 0
        while i < len(s) and "0" <= s[i] <= "9":
            value = value * 10 + int(s[i])
            if value > MAX:
                raise ValueError(f"time: invalid duration {orig!r}")
            i += 1
        pre, s = i > 0, s[i:]
        fraction, scale, post = 0, 1.0, False
        if s.startswith("."):
            s = s[1:]
            i, overflow = 0, False
            while i < len(s) and "0" <= s[i] <= "9":
                if not overflow:
                    if fraction > (MAX - 1) // 10:
                        overflow = True
                    else:
                        fraction = fraction * 10 + int(s[i])
                        scale *= 10
                i += 1
            post, s = i > 0, s[i:]
        if not pre and not post:
            raise ValueError(f"time: invalid duration {orig!r}")
        i = 0
        while i < len(s) and not (s[i] == "." or "0" <= s[i] <= "9"):
            i += 1
        if i == 0:
            raise ValueError(f"time: missing unit in duration {orig!r}")
        unit = UNITS.get(s[:i])
        if unit is None:
            raise ValueError(f"time: unknown unit {s[:i]!r} in duration {orig!r}")
        s = s[i:]
        if value > MAX // unit:
            raise ValueError(f"time: invalid duration {orig!r}")
        value *= unit
        if fraction > 0:
            value += int(float(fraction) * (float(unit) / scale))  # float64, as Go
            if value > MAX:
                raise ValueError(f"time: invalid duration {orig!r}")
        total += value
        if total > MAX:
            raise ValueError(f"time: invalid duration {orig!r}")
    if neg:
        return -total
    if total > MAX - 1:
        raise ValueError(f"time: invalid duration {orig!r}")
    return total


KUBERNETES_FUNCTIONS = [
    cel.FunctionDecl(
        "k8s_duration",
        [cel.Overload("k8s_duration_string", return_type=cel.Type.INT, parameters=[cel.Type.STRING], impl=go_parse_duration)],
    ),
]


def kubernetes_spelling(rule):
    return re.sub(r"(?<![.\w])duration\(", "k8s_duration(", rule)


def environment(mode):
    if mode == "flux":
        extensions = [ext_optional.ExtOptional(), ext_strings.ExtStrings(), ext_encoders.ExtEncoders()]
        return cel.NewEnv(extensions=extensions)
    return cel.NewEnv(
        variables={"self": cel.Type.DYN, "oldSelf": cel.Type.DYN},
        extensions=[ext_strings.ExtStrings()],
        functions=KUBERNETES_FUNCTIONS,
    )


def plain(value):
    """A CEL result as JSON."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    return str(value)


def evaluate(env, mode, case):
    expr = case["expr"] if mode == "flux" else kubernetes_spelling(case["expr"])
    try:
        compiled = env.compile(expr, disable_check=(mode == "flux"))
    except Exception as error:  # a compile error is the expression's answer
        return {"error": f"compile: {error}"}
    result = compiled.eval(data=case["data"])
    kind = result.type().name()
    if kind == "ERROR":
        return {"error": str(result.value())}
    value = result.plain_value()
    if mode == "flux" and not isinstance(value, bool):
        return {"error": f"not a boolean: {kind}"}
    return {"value": plain(value)}


def main():
    request = json.load(sys.stdin)
    mode = request["mode"]
    env = environment(mode)
    print(json.dumps([evaluate(env, mode, case) for case in request["cases"]]))


if __name__ == "__main__":
    main()
