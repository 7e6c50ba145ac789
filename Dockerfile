# burst's image: burstd (controller or worker, the entry point) and burst (the client), in a venv
# at /opt/burst, run as the unprivileged user burst. docs/deploy.md shows how to build and run it.
#
#   docker build -t burst .                                  # from PyPI, on debian:bookworm-slim
#   docker build -t burst --build-arg BASE=my-debian:12 .    # another base with python3 (>= 3.11)
#   docker build -t burst --build-arg PIP_OPTIONS="--no-index --find-links /src/wheels" .
#                                                            # offline: wheels put in ./wheels first
#
# The base must be Debian-like (apt-get, useradd) and give python3 with venv, or apt-get must be
# able to install them: CI imports a debootstrap root file system as its base (no registry there).
ARG BASE=debian:bookworm-slim

FROM ${BASE} AS build
# the stage's image is left behind untagged; this label finds it for `docker image prune`
LABEL org.burst.stage=build
RUN command -v python3 >/dev/null && python3 -c 'import venv, ensurepip' 2>/dev/null \
    || (apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*)
ARG PIP_OPTIONS=""
COPY . /src
RUN python3 -m venv /opt/burst \
    && /opt/burst/bin/pip install --no-compile --disable-pip-version-check ${PIP_OPTIONS} /src \
    && /opt/burst/bin/python -m compileall -q /opt/burst/lib

FROM ${BASE}
RUN command -v python3 >/dev/null \
    || (apt-get update && apt-get install -y --no-install-recommends python3 \
        && rm -rf /var/lib/apt/lists/*)
COPY --from=build /opt/burst /opt/burst
# The controller's state and the jobs' output live in volumes mounted at these two folders; a
# fresh named volume takes the folder's owner from the image, so burst can write to it.
RUN useradd --system --user-group --home-dir /var/lib/burst --shell /usr/sbin/nologin burst \
    && install -d -o burst -g burst -m 0750 /var/lib/burst \
    && install -d -o burst -g burst -m 0755 /output
ENV PATH=/opt/burst/bin:$PATH \
    BURST_STATE_DIR=/var/lib/burst \
    BURST_OUTPUT_DIR=/output
USER burst
WORKDIR /output
EXPOSE 50051 51051
ENTRYPOINT ["burstd"]
# Every interface is off loopback: the controller refuses to start there without TLS (give it
# --tls-cert and --tls-key, or the BURST_TLS_* variables; `burstd tls init` makes them, as
# compose.yaml does) unless --insecure is given.
CMD ["controller", "--listen", "0.0.0.0:50051"]
