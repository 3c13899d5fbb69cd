"""A Docker engine and a base image for the container rehearsal (make docker-smoke).

The engine: the one `docker info` reaches, else a dockerd this fixture starts itself
(as root, Debian's docker.io) with its own socket, and stops by pid at the end of the
session. Its images live in ~/.cache/tunewell/docker, so a second run reuses the base
image and the dependency layer.

The base image: TUNEWELL_BASE_IMAGE, else the Dockerfile's public default when it can
be pulled, else (no registry reachable, as on the project's machines) a Debian bookworm
made here with debootstrap and `docker import`ed as local/debian-min:bookworm.
"""

import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

CACHE = os.path.expanduser("~/.cache/tunewell")
PUBLIC_BASE = "python:3.11-slim-bookworm"
LOCAL_BASE = "local/debian-min:bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"


def docker(env, *args, check=True, timeout=120, **kw):
    return subprocess.run(["docker", *args], env=env, check=check, timeout=timeout, text=True,
                          capture_output=True, **kw)


def engine_answers(env) -> bool:
    try:
        return docker(env, "info", "--format", "{{.ServerVersion}}", check=False, timeout=20).returncode == 0
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def docker_env():
    env = dict(os.environ)
    if shutil.which("docker") is None:
        pytest.fail("no docker client: apt-get install docker.io (or install Docker), then make docker-smoke")
    if engine_answers(env):
        yield env
        return
    if shutil.which("dockerd") is None or os.geteuid() != 0:
        pytest.fail("no Docker engine answers, and this process cannot start one (needs root and dockerd: "
                    "apt-get install docker.io). Start Docker, then make docker-smoke.")
    run_dir = tempfile.mkdtemp(prefix="tunewell-dockerd-")
    socket, pidfile = os.path.join(run_dir, "docker.sock"), os.path.join(run_dir, "dockerd.pid")
    log = open(os.path.join(run_dir, "dockerd.log"), "w")
    daemon = subprocess.Popen(["dockerd", "--data-root", os.path.join(CACHE, "docker"), "--exec-root",
                               os.path.join(run_dir, "exec"), "-H", f"unix://{socket}", "-p", pidfile],
                              stdout=log, stderr=subprocess.STDOUT)
    env["DOCKER_HOST"] = f"unix://{socket}"
    deadline = time.time() + 60
    while not engine_answers(env):
        if daemon.poll() is not None or time.time() > deadline:
            daemon.kill()
            pytest.fail(f"dockerd did not start: {open(log.name).read()[-2000:]}")
        time.sleep(0.5)
    try:
        yield env
    finally:
        os.kill(daemon.pid, signal.SIGTERM)  # by pid: containerd and the shims stop with it
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
        log.close()
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def base_image(docker_env):
    chosen = os.environ.get("TUNEWELL_BASE_IMAGE")
    if chosen:
        return chosen
    for image in (PUBLIC_BASE, LOCAL_BASE):
        if docker(docker_env, "image", "inspect", image, check=False).returncode == 0:
            return image
    if docker(docker_env, "pull", PUBLIC_BASE, check=False, timeout=300).returncode == 0:
        return PUBLIC_BASE
    if shutil.which("debootstrap") is None:
        pytest.fail(f"cannot pull {PUBLIC_BASE} and debootstrap is missing: apt-get install debootstrap, or set "
                    "TUNEWELL_BASE_IMAGE to a Debian-based image with python3 and python3-venv.")
    rootfs = tempfile.mkdtemp(prefix="tunewell-rootfs-")
    try:
        subprocess.run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
                        "bookworm", rootfs, DEBIAN_MIRROR], check=True, capture_output=True, timeout=900)
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(["docker", "import", "-", LOCAL_BASE], stdin=tar.stdout, env=docker_env, check=True,
                       capture_output=True, timeout=300)
        tar.wait()
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)
    return LOCAL_BASE
