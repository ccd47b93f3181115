"""Helm actions through the real Helm library (helm-sdkpy: Helm v4's Go library), for tests/helm.rs
and tests/e2e.rs. One action per run; prints one JSON object on stdout:
{"ok": true, "result": ...} (exit 0), or {"ok": false, "error": "..."} when Helm refused (exit 2).

    python3 helm.py check
    python3 helm.py lint --chart DIR
    python3 helm.py install|upgrade --kubeconfig KC --namespace NS --release R --chart DIR
        [--values JSON] [--create-namespace] [--wait SECONDS] [--reset-values] [--server-side]
    python3 helm.py rollback --kubeconfig KC --namespace NS --release R --revision N
    python3 helm.py uninstall|history|status|get-values --kubeconfig KC --namespace NS --release R
    python3 helm.py list --kubeconfig KC --namespace NS
"""

import argparse
import asyncio
import json
import sys


def release_summary(release):
    """What the tests read of a Helm release: not the chart's files."""
    info = release.get("info") or {}
    chart = (release.get("chart") or {}).get("metadata") or {}
    return {
        "name": release.get("name"),
        "namespace": release.get("namespace"),
        "version": release.get("version"),
        "status": info.get("status"),
        "description": info.get("description"),
        "notes": info.get("notes"),
        "manifest": release.get("manifest"),
        "config": release.get("config") or {},
        "chart_version": chart.get("version"),
        "app_version": chart.get("appVersion"),
    }


async def run(args, h):
    if args.action == "check":
        return {"helm_sdkpy": h.__version__}
    config = h.Configuration(namespace=args.namespace, kubeconfig=args.kubeconfig)
    values = json.loads(args.values) if args.values else None
    wait = args.wait > 0
    if args.action == "lint":
        result = await h.Lint(config).run(args.chart)
        # Helm's messages carry their text in a Go error the library serialises as {}: keep
        # what survives (severity 1 info, 2 warning, 3 error; and the file).
        return {
            "messages": [{"severity": m.get("Severity"), "path": m.get("Path")} for m in result.get("Messages") or []],
            "errors": [str(e) for e in result.get("Errors") or []],
        }
    if args.action == "install":
        release = await h.Install(config).run(
            args.release, args.chart, values=values, create_namespace=args.create_namespace,
            wait=wait, timeout=args.wait or 60, server_side_apply=args.server_side)
        return release_summary(release)
    if args.action == "upgrade":
        release = await h.Upgrade(config).run(
            args.release, args.chart, values=values, wait=wait, timeout=args.wait or 60,
            reset_values=args.reset_values, server_side_apply=True if args.server_side else "auto")
        return release_summary(release)
    if args.action == "rollback":
        return await h.Rollback(config).run(args.release, revision=args.revision)
    if args.action == "uninstall":
        return await h.Uninstall(config).run(args.release, wait=wait, timeout=args.wait or 60)
    if args.action == "list":
        return [release_summary(r) for r in await h.List(config).run(all=True) or []]
    if args.action == "history":
        return [release_summary(r) for r in await h.History(config).run(args.release) or []]
    if args.action == "status":
        return release_summary(await h.Status(config).run(args.release))
    if args.action == "get-values":
        return await h.GetValues(config).run(args.release)
    raise SystemExit(f"unknown action {args.action}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("action")
    parser.add_argument("--kubeconfig")
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--release")
    parser.add_argument("--chart")
    parser.add_argument("--values")
    parser.add_argument("--revision", type=int, default=0)
    parser.add_argument("--wait", type=int, default=0, help="seconds to wait for readiness; 0: do not wait")
    parser.add_argument("--create-namespace", action="store_true")
    parser.add_argument("--reset-values", action="store_true")
    parser.add_argument("--server-side", action="store_true", help="apply with server-side apply (helm 4's --server-side)")
    args = parser.parse_args()
    import helm_sdkpy as h

    try:
        result = asyncio.run(run(args, h))
    except h.HelmError as error:
        print(json.dumps({"ok": False, "error": str(error)}))
        sys.exit(2)
    print(json.dumps({"ok": True, "result": result}))


if __name__ == "__main__":
    main()
