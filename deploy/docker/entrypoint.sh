#!/bin/sh
# Container entrypoint: every argument after the image name goes to `sparse-serve serve`.
# SPARSE_SERVE_API_KEY_FILE (a Docker/Compose secret or a mounted Kubernetes Secret) is read into
# SPARSE_SERVE_API_KEY so the key never has to appear in `docker inspect` or the process list.
set -eu

if [ -n "${SPARSE_SERVE_API_KEY_FILE:-}" ]; then
    if [ ! -r "$SPARSE_SERVE_API_KEY_FILE" ]; then
        echo "entrypoint: SPARSE_SERVE_API_KEY_FILE=$SPARSE_SERVE_API_KEY_FILE is not a readable file" >&2
        exit 2
    fi
    SPARSE_SERVE_API_KEY="$(cat "$SPARSE_SERVE_API_KEY_FILE")"
    if [ -z "$SPARSE_SERVE_API_KEY" ]; then
        echo "entrypoint: $SPARSE_SERVE_API_KEY_FILE is empty" >&2
        exit 2
    fi
    export SPARSE_SERVE_API_KEY
    unset SPARSE_SERVE_API_KEY_FILE
fi

exec sparse-serve serve "$@"
