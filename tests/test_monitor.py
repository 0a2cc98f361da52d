"""NATS monitoring endpoints through the engine (issue 5)."""

from __future__ import annotations

import pytest

import dagnats_nb as dn
from dagnats_nb.observe.monitor import MonitoringOff


def test_monitoring_endpoints_flatten_into_frames(tmp_path):
    with dn.Engine.start(data_dir=tmp_path / "e", monitor_port=0) as eng:
        assert eng.monitor_url.startswith("http://127.0.0.1:")
        varz = eng.monitor("varz").set_index("key")["value"]
        assert varz["host"] == "127.0.0.1"
        assert varz["jetstream.config.max_storage"] == eng.settings.max_store_bytes
        jsz = eng.monitor("jsz").set_index("key")["value"]
        assert jsz["streams"] >= 5
        connz = eng.monitor("connz")
        assert len(connz) >= 1 and "name" in connz.columns
        assert any(str(n).startswith("dagnats-nb ") for n in connz["name"])
        subsz = eng.monitor("subsz").set_index("key")["value"]
        assert subsz["num_subscriptions"] > 0
        other = dn.Engine.connect(data_dir=eng.settings.data_dir)
        try:
            assert other.monitor_url == eng.monitor_url
            assert other.monitor("varz").set_index("key")["value"]["port"] == varz["port"]
        finally:
            other.stop()
        with pytest.raises(dn.DagnatsError, match="unknown monitoring endpoint 'routez'"):
            eng.monitor("routez")


def test_monitoring_off_is_a_clear_message(engine):
    with pytest.raises(
        MonitoringOff, match="NATS monitoring is off: start the engine with monitor_port=0"
    ):
        engine.monitor("varz")
