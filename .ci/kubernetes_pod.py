"""CI: run the rendered Deployment's, Job's and CronJob's own commands, with the ConfigMap's settings, from
this checkout on a read-only root filesystem, as their pods would run them.

Each command runs in a mount namespace of its own where / is remounted read-only and a fresh tmpfs stands
in for each emptyDir volume of the gateway container (at its mountPath; SLUICE_DATA_DIR's over /mnt, since
no /data can be made on a read-only host), against the PostgreSQL and Redis of DATABASE_URL
and REDIS_URL (an empty database). In order: the init container keeps waiting on the unmigrated database;
the migration Job succeeds; the init container then passes; the gateway serves /healthz, /readyz,
/metrics and the admin's static files, and on SIGTERM drains and exits within its termination grace less
the preStop pause; the pruning CronJob succeeds. No command may log that it could not write a file.
Not shown here: the image (.ci/image), the user id (root here), and anything of a cluster.

Usage: DATABASE_URL=… REDIS_URL=… python .ci/kubernetes_pod.py RENDERED.yaml   (as root, on Linux)
"""

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
# SLUICE_DATA_DIR's emptyDir: no /data can be made on a read-only host, so it is mounted over /mnt.
DATA_MOUNT = "/mnt"
WRITE_ERRORS = ("Read-only file system", "Permission denied", "Errno 30", "Errno 13")


def fail(message: str) -> None:
    print(f"POD CHECK FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def objects_of(path: str) -> dict[tuple[str, str], dict[str, Any]]:
    items = [item for item in yaml.safe_load_all(Path(path).read_text()) if item]
    return {(item["kind"], item["metadata"]["name"]): item for item in items}


def pod_spec(item: dict[str, Any]) -> dict[str, Any]:
    spec = item["spec"]["jobTemplate"]["spec"] if item["kind"] == "CronJob" else item["spec"]
    return spec["template"]["spec"]


def namespace_command(mounts: list[str], command: list[str]) -> list[str]:
    """The command, in a mount namespace with a read-only root and a tmpfs at each emptyDir path."""
    steps = ["mount -o remount,bind,ro /"]
    # A checkout under an emptyDir path (a clone in /tmp) would vanish under its tmpfs: it is set aside
    # on an empty directory that is no mount path first, and put back, read-only, inside the tmpfs.
    hidden = any(ROOT == Path(path) or Path(path) in ROOT.parents for path in mounts)
    if hidden:
        stash = next(p for p in ("/srv", "/media", "/opt") if Path(p).is_dir() and p not in mounts)
        steps.append(f"mount --bind {ROOT} {stash}")
    steps += [f"mount -t tmpfs -o size=256m,mode=1777 tmpfs {path}" for path in mounts]
    if hidden:
        steps += [f"mkdir -p {ROOT}", f"mount --bind {stash} {ROOT}", f"mount -o remount,bind,ro {ROOT}"]
    script = " && ".join(steps) + ' && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "pod", *command]


def run(name: str, command: list[str], env: dict[str, str], mounts: list[str], timeout: float) -> str:
    """Run to the end; fail on a non-zero exit, a timeout, or a write error in the output."""
    started = time.monotonic()
    result = subprocess.run(
        namespace_command(mounts, command), env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    output = result.stdout + result.stderr
    if result.returncode != 0:
        fail(f"{name} exited {result.returncode}:\n{output[-3000:]}")
    check_writes(name, output)
    print(f"{name}: exit 0 in {time.monotonic() - started:.1f} s")
    return output


def check_writes(name: str, output: str) -> None:
    for error in WRITE_ERRORS:
        if error in output:
            fail(f"{name} could not write a file ({error}):\n{output[-3000:]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers={"Host": "10.1.2.3:8000"}), timeout=5
        ) as r:
            return r.status
    except urllib.error.HTTPError as error:
        return error.code


def serve(command: list[str], env: dict[str, str], mounts: list[str], grace: float) -> None:
    port = int(env["PORT"])
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(
            namespace_command(mounts, command), env=env, cwd=ROOT, stdout=log, stderr=log
        )
        try:
            deadline = time.monotonic() + 60
            while get_quietly(f"http://127.0.0.1:{port}/healthz") != 200:
                if time.monotonic() > deadline or process.poll() is not None:
                    log.seek(0)
                    fail(f"the gateway did not start:\n{log.read()[-3000:]}")
                time.sleep(0.2)
            for path in ("/healthz", "/readyz", "/metrics", "/static/admin/css/base.css"):
                status = get(f"http://127.0.0.1:{port}{path}")
                print(f"gateway: GET {path} (Host: a pod address) -> {status}")
                if status != 200:
                    fail(f"GET {path} answered {status}")
            stopped = time.monotonic()
            process.send_signal(signal.SIGTERM)
            try:
                code = process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                fail(f"the gateway did not exit within {grace:g} s of SIGTERM")
            print(
                f"gateway: exit {code} {time.monotonic() - stopped:.1f} s after SIGTERM (allowed {grace:g} s)"
            )
            log.seek(0)
            output = log.read()
            check_writes("gateway", output)
            # uvicorn re-raises SIGTERM once it has shut down: the kubelet sees 143, as for any such exit.
            if code not in (0, -signal.SIGTERM) or "drained" not in output:
                fail(f"the gateway did not drain and exit cleanly (exit {code}):\n{output[-3000:]}")
        finally:
            if process.poll() is None:
                process.kill()


def get_quietly(url: str) -> int:
    try:
        return get(url)
    except OSError:
        return 0


def main() -> None:
    objects = objects_of(sys.argv[1])
    deployment = pod_spec(objects[("Deployment", "sluice")])
    gateway = deployment["containers"][0]
    config_name = next(s["configMapRef"]["name"] for s in gateway["envFrom"] if "configMapRef" in s)
    config = objects[("ConfigMap", config_name)]["data"]
    volumes = {v["name"] for v in deployment["volumes"] if "emptyDir" in v}
    mounts = [m["mountPath"] for m in gateway["volumeMounts"] if m["name"] in volumes]
    if config["SLUICE_DATA_DIR"] not in mounts:
        fail("SLUICE_DATA_DIR is not an emptyDir of the gateway")
    mounts = [DATA_MOUNT if path == config["SLUICE_DATA_DIR"] else path for path in mounts]
    env = {
        **config,
        "SLUICE_DATA_DIR": DATA_MOUNT,
        "PORT": str(free_port()),
        "PATH": f"{ROOT / '.venv' / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin",
        "PYTHONDONTWRITEBYTECODE": "1",  # as the image has it
        "SECRET_KEY": secrets.token_urlsafe(50),
        "SLUICE_METRICS_TOKEN": "",
        "DATABASE_URL": os.environ["DATABASE_URL"],
        "REDIS_URL": os.environ["REDIS_URL"],
    }
    init = deployment["initContainers"][0]["command"]
    try:
        subprocess.run(namespace_command(mounts, init), env=env, cwd=ROOT, capture_output=True, timeout=8)
        fail("the init container did not wait on an unmigrated database")
    except subprocess.TimeoutExpired:
        print("init container: still waiting after 8 s on the unmigrated database")
    job = pod_spec(objects[("Job", "sluice-migrate")])["containers"][0]["command"]
    run("migration Job", job, env, mounts, 600)
    run("init container", init, env, mounts, 60)
    command = [("127.0.0.1" if part == "0.0.0.0" else part) for part in gateway["command"]]
    pause = float(gateway["lifecycle"]["preStop"]["exec"]["command"][1])
    serve(command, env, mounts, deployment["terminationGracePeriodSeconds"] - pause)
    cron = pod_spec(objects[("CronJob", "sluice-prunelogs")])["containers"][0]["command"]
    print(run("prunelogs CronJob", cron, env, mounts, 300).strip().splitlines()[-1])


if __name__ == "__main__":
    main()
