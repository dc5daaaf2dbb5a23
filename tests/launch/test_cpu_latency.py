"""launch.cpu_latency.hold: a PM QoS request only where a cpuidle driver will read it."""
from __future__ import annotations

import struct

from launch.cpu_latency import hold


def test_held_where_a_cpuidle_driver_reads_it(tmp_path):
    driver, device = tmp_path / "current_driver", tmp_path / "cpu_dma_latency"
    driver.write_text("haltpoll\n")
    device.write_bytes(b"")
    held, why = hold(0, device=str(device), cpuidle_driver=str(driver))
    assert held is not None and why == ""
    assert struct.unpack("i", device.read_bytes()) == (0,)
    held.close()
    assert held.fd is None


def test_not_held_without_a_cpuidle_driver(tmp_path):
    driver, device = tmp_path / "current_driver", tmp_path / "cpu_dma_latency"
    device.write_bytes(b"")
    for state in ("none\n", None):   # the driver says none, or cpuidle is not there at all
        if state is None:
            driver.unlink()
        else:
            driver.write_text(state)
        held, why = hold(0, device=str(device), cpuidle_driver=str(driver))
        assert held is None and "no cpuidle driver" in why
        assert device.read_bytes() == b""   # nothing was asked


def test_a_device_that_cannot_be_opened_is_named(tmp_path):
    driver = tmp_path / "current_driver"
    driver.write_text("acpi_idle\n")
    missing = tmp_path / "no" / "cpu_dma_latency"
    held, why = hold(0, device=str(missing), cpuidle_driver=str(driver))
    assert held is None and str(missing) in why
