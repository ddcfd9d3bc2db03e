"""Which GPUs the model actors ask for is decided from the cluster, not the driver."""
import pytest

import pipelines.stages.ray_session as rs


def test_actor_gpus_follow_the_cluster_unless_cpu_is_asked(monkeypatch):
    monkeypatch.setattr(rs, "cluster_gpus", lambda: 4.0)  # a CPU-only head, 4 GPU workers
    assert rs.actor_gpus(None) == 4.0
    assert rs.actor_gpus("cuda") == 4.0 and rs.actor_gpus("cuda:0") == 4.0
    assert rs.actor_gpus("cpu") == 0.0
    monkeypatch.setattr(rs, "cluster_gpus", lambda: 0.0)
    assert rs.actor_gpus(None) == 0.0 and rs.actor_gpus("cpu") == 0.0
    with pytest.raises(ValueError, match="no GPUs"):  # audit, steer, fit and index alike
        rs.actor_gpus("cuda")

