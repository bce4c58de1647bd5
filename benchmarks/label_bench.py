"""What image labels cost a build on this Docker (the legacy builder), in one run.

Docker's legacy builder turns every label of the build API's `labels` into a
`LABEL` step of its own (a container made and committed each), and the values
differ per program, so no build reuses those steps. This builds the same
context (a Hershy program's: `build_context`, all layers cached) interleaved,
round by round, with: no labels (the floor: `docker build` of the user's
Dockerfile, and what a Hershy build gives now: `image_names`), the three a
Hershy build gives only a Dockerfile whose last stage is only FROM
(`image_labels`, as every build did before), and the four builds gave before
that; medians and ratios to the floor.

    python3 benchmarks/label_bench.py            # 7 rounds
    python3 benchmarks/label_bench.py --smoke    # 1 round
"""

from __future__ import annotations

import argparse
import contextlib
import io
import secrets
import statistics
import sys
import time

import docker
import docker.errors

from hershy.adapters.docker.build import build_context, image_labels
from hershy.adapters.docker.compose import LABEL_BUILD, LABEL_MANAGED, labels_for
from hershy.domain.validation import ProgramSource

DOCKERFILE = b'FROM hershy-busybox:latest\nCOPY app /app\nCMD ["/bin/busybox", "sleep", "1"]\n'


def build(
    client: docker.APIClient, context: bytes, labels: dict[str, str], made: set[str]
) -> float:
    """Seconds the build took; the image it made goes in `made` (removed at the end)."""
    began = time.perf_counter()
    for chunk in client.build(
        fileobj=io.BytesIO(context),
        custom_context=True,
        labels=labels or None,
        rm=True,
        forcerm=True,
        network_mode="none",
        decode=True,
    ):
        if "error" in chunk:
            raise RuntimeError(chunk["error"])
        if "aux" in chunk and "ID" in chunk["aux"]:
            made.add(chunk["aux"]["ID"])
    return time.perf_counter() - began


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--rounds", type=int, default=7)
    arguments = parser.parse_args(argv)
    rounds = 1 if arguments.smoke else arguments.rounds
    client = docker.APIClient(version="auto")
    context = build_context(ProgramSource(DOCKERFILE, {"app": secrets.token_bytes(4096)}))
    host = secrets.token_hex(6)
    made: set[str] = set()

    def hershy_now() -> dict[str, str]:
        return image_labels(host, "prog-" + secrets.token_hex(6), "bench")

    def hershy_before() -> dict[str, str]:
        labels = labels_for(host, "prog-" + secrets.token_hex(6), "b-" + secrets.token_hex(12))
        return {**labels, "dev.hershy.user": "bench"}

    kinds = {
        "no labels (floor)": lambda: {},
        f"FROM-only builds' ({len(hershy_now())} labels)": hershy_now,
        f"before ({len(hershy_before())} labels, with {LABEL_BUILD})": hershy_before,
    }
    times: dict[str, list[float]] = {name: [] for name in kinds}
    try:
        build(client, context, {}, made)  # every layer of the context cached from here on
        for _ in range(rounds):
            for name, labels in kinds.items():
                times[name].append(build(client, context, labels(), made))
    finally:
        # The labelled ones first: the unlabelled image is their parent.
        for image in client.images(filters={"label": [f"{LABEL_MANAGED}={host}"]}):
            client.remove_image(image["Id"], force=True)
        for image_id in made - {
            image["Id"] for image in client.images(filters={"label": [f"{LABEL_MANAGED}={host}"]})
        }:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                client.remove_image(image_id, force=True)
    floor = statistics.median(times["no labels (floor)"])
    print(f"label_bench: a cached build of one COPY, {rounds} interleaved rounds, medians")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"  {name:<40} {median * 1000:8.0f} ms  {median / floor:5.2f}x the floor")
    return 0


if __name__ == "__main__":
    sys.exit(main())
