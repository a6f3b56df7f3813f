# syntax=docker/dockerfile:1
#
# One image for every Warren process: the four services, the Celery worker and `warren seed`.
# docker-compose.yml picks the process with `command:`, so the image sets no CMD.
# The code runs on Python 3.11 (development machines, CI) and 3.12 (this image).
FROM python:3.12-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /app

# Dependencies go in their own layer, before the code, because they change far less often.
# requirements.txt lists the direct pins. constraints.txt (a full `pip freeze`) fixes every
# transitive version to the one tested on the development machines.
COPY requirements.txt constraints.txt ./
RUN pip install -r requirements.txt -c constraints.txt

COPY pyproject.toml README.md ./
COPY shared/ shared/
COPY services/ services/
COPY cli/ cli/
# --no-deps: everything is installed already, and the pins above stay as they are.
# This install provides the `warren` command.
RUN pip install --no-deps .

# Run as an unprivileged user. The code under /app belongs to root and is read-only for it.
# /definitions is where the broker-definitions job writes; a named volume mounted there starts
# with this folder's owner, so the job can write into it.
RUN useradd --system --create-home --uid 10001 --user-group warren \
    && mkdir /definitions && chown warren:warren /definitions
USER warren
