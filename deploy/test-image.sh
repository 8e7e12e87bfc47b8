#!/usr/bin/env bash
# `make test-image`: build deploy/Dockerfile with no image registry reachable, run `imesh up`
# in the image and call it from the host. The base is Debian bookworm made by debootstrap
# (cached as $BASE_IMAGE); the wheels are built on the host and installed offline.
# Skips (exit 0, saying why) only when no Docker daemon can be started.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
WHEEL_PYTHON=${WHEEL_PYTHON:-/usr/bin/python3}
BASE_IMAGE=${BASE_IMAGE:-imesh-base:bookworm}
IMAGE=${IMAGE:-imesh:test}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DOCKERD_LOG=${DOCKERD_LOG:-/tmp/imesh-dockerd.log}

work=$(mktemp -d)
container=""
cleanup() {
  if [ -n "$container" ]; then docker rm -f "$container" >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
say() { echo "test-image: $*"; }
skip() { say "SKIPPED: $*"; exit 0; }
apt_install() {
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@") >/dev/null 2>&1
}

# 1. A daemon: install docker.io when dockerd is missing, start it when it is not running.
if ! command -v dockerd >/dev/null 2>&1; then
  say "installing docker.io"
  apt_install docker.io || skip "docker.io cannot be installed"
fi
if ! docker info >/dev/null 2>&1; then
  say "starting dockerd (log: $DOCKERD_LOG)"
  nohup dockerd >"$DOCKERD_LOG" 2>&1 &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || skip "dockerd does not start: $(tail -1 "$DOCKERD_LOG")"
fi

# 2. The base image, built once: Debian with python3 and venv, imported (nothing pulled).
if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
  say "building $BASE_IMAGE with debootstrap (about a minute)"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$work/rootfs" "$DEBIAN_MIRROR" >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log"; exit 1; }
  tar -C "$work/rootfs" -c . | docker import - "$BASE_IMAGE" >/dev/null
  rm -rf "$work/rootfs"
fi

# 3. The build context: the tree's files (tracked or new, never ignored ones) and a
#    wheelhouse built on the host, so the image build needs no package index.
mkdir -p "$work/ctx"
git ls-files -z --cached --others --exclude-standard \
  | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
  | tar --null -T - -cf - | tar -xf - -C "$work/ctx"
# Dependencies chosen by environment markers (python_full_version, say) must match the
# image's interpreter, so the wheels are built by a host Python of the image's version
# (Debian's own python3 for the debootstrap base).
image_python=$(docker run --rm "$BASE_IMAGE" python3 -c 'import platform; print(platform.python_version())')
host_python=$("$WHEEL_PYTHON" -c 'import platform; print(platform.python_version())')
[ "$image_python" = "$host_python" ] || {
  say "$BASE_IMAGE has Python $image_python, $WHEEL_PYTHON is $host_python: set WHEEL_PYTHON"
  exit 1
}
say "building wheels on the host with $WHEEL_PYTHON ($host_python)"
"$WHEEL_PYTHON" -m venv "$work/wheel-venv" 2>/dev/null || {
  apt_install python3-venv && "$WHEEL_PYTHON" -m venv "$work/wheel-venv"
}
"$work/wheel-venv/bin/pip" wheel --quiet --wheel-dir "$work/ctx/wheelhouse" "$work/ctx[server,tracing]" \
  >"$work/wheel.log" 2>&1 || { tail -20 "$work/wheel.log"; exit 1; }
say "building $IMAGE from deploy/Dockerfile on $BASE_IMAGE"
DOCKER_BUILDKIT=0 docker build --quiet -f "$work/ctx/deploy/Dockerfile" \
  --build-arg BASE="$BASE_IMAGE" --build-arg WHEELHOUSE=wheelhouse \
  -t "$IMAGE" "$work/ctx" >"$work/build.log" 2>&1 || { tail -30 "$work/build.log"; exit 1; }

# 4. `imesh up` inside, called from the host over HTTP and over gRPC.
container=$(docker run -d -p 127.0.0.1::8080 -p 127.0.0.1::50051 "$IMAGE" \
  up --listen 0.0.0.0:50051 --http 0.0.0.0:8080)
http_port=$(docker port "$container" 8080/tcp | head -1 | sed 's/.*://')
grpc_port=$(docker port "$container" 50051/tcp | head -1 | sed 's/.*://')
"$PY" - "$http_port" "$grpc_port" "$container" <<'PYEOF' || { docker logs "$container" 2>&1 | tail -20; exit 1; }
import subprocess, sys, time
import httpx
from imesh.client import SyncClient
from imesh.v1 import chat_pb2

http_port, grpc_port, container = sys.argv[1], sys.argv[2], sys.argv[3]
base = f"http://127.0.0.1:{http_port}"
for _ in range(120):
    try:
        if httpx.get(base + "/healthz", timeout=1).status_code == 200:
            break
    except httpx.HTTPError:
        pass
    time.sleep(0.25)
else:
    raise SystemExit("the edge in the container never answered /healthz")
# The shipped config's demo tenant: its key is printed once at start.
logs = subprocess.run(["docker", "logs", container], capture_output=True, text=True).stdout
prefix = "demo key for tenant demo: "
key = next(line[len(prefix):] for line in logs.splitlines() if line.startswith(prefix))
body = {"model": "auto", "messages": [{"role": "user", "content": "hello"}]}
resp = httpx.post(base + "/v1/chat/completions", json=body,
                  headers={"authorization": f"Bearer {key}"}, timeout=30)
assert resp.status_code == 200, resp.text
assert resp.json()["choices"][0]["message"]["content"], resp.text
chat = chat_pb2.ChatInput(model="auto", messages=[chat_pb2.Message(
    role=chat_pb2.ROLE_USER, content=[chat_pb2.ContentPart(text="hello")])])
with SyncClient(f"127.0.0.1:{grpc_port}", api_key=key) as client:
    answer = client.chat(chat)
assert answer.message.content, answer
print("test-image: the image answered over HTTP and gRPC")
PYEOF
uid=$(docker exec "$container" id -u)
[ "$uid" = 10001 ] || { say "the image runs as uid $uid, not 10001"; exit 1; }
say "passed ($IMAGE on $BASE_IMAGE runs as uid $uid)"
