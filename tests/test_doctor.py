"""edgec doctor: each target's tools run on a one-line program; a missing one is one clear line."""

import json
import os
import sys
from pathlib import Path

import pytest

from toolchain.cli import main
from toolchain.targets.registry import debian_packages


def test_packages_come_from_the_device_files():
    pkgs = debian_packages()
    # armv7's C headers are only recommended by its gcc package: they must be named.
    for needed in ("gcc-arm-linux-gnueabihf", "libc6-dev-armhf-cross", "gcc-aarch64-linux-gnu",
                   "libc6-dev-arm64-cross", "qemu-user", "g++"):
        assert needed in pkgs


def test_doctor_all_targets_ok(capsys):
    rc = main(["doctor", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0, report
    assert set(report) >= {"host", "arm-a72", "armv7-a7", "fpga-xcu250"}
    assert all(r["ok"] for r in report.values())


def test_doctor_names_missing_tools(tmp_path, monkeypatch, capsys):
    # A PATH with only this Python on it: no compilers, no qemu.
    (tmp_path / "python3").symlink_to(sys.executable)
    monkeypatch.setenv("PATH", str(tmp_path))
    rc = main(["doctor", "armv7-a7", "host"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 3
    assert len(out) == 2
    assert out[0].startswith("missing  armv7-a7:") and "libc6-dev-armhf-cross" in out[0]
    assert out[1].startswith("missing  host:") and "apt-get install gcc" in out[1]


def test_doctor_unknown_target(capsys):
    assert main(["doctor", "no-such-board"]) == 3
    assert "unknown target" in capsys.readouterr().out
