"""The small model card, scenario and training configuration the agent tests share."""

from __future__ import annotations

from agents.actions import ActionConfig
from agents.networks import NetConfig
from agents.ppo import PPOConfig
from agents.train import TrainConfig
from costmodel.cards import ModelCard
from lyapunov import processes as pr
from lyapunov.env import Scenario

SMALL = ModelCard("small-4x4", 4, 4, 4, 1024, 4096, 32000, "swiglu", False)

# A Pi 5 with a MEC server whose share of its GPU is heavily contended (median 3%): the fastest
# partition switches between edge-only, cloud-only and splits with the share and bandwidth.
SCENARIO = Scenario(
    model=SMALL, device="rpi5", cloud="mec", tau_s=1.0, V=10.0, episode_slots=128,
    arrival=pr.ArrivalConfig(rate=2.0),
    link=pr.LinkConfig(
        bandwidth=pr.BandwidthConfig(kind="ar1", mean_mbps=20.0, std_mbps=15.0, rho=0.9),
        rtt_ms=5.0, share=pr.ShareConfig(kind="ar1", median_share=0.03, logit_std=1.5,
                                         rho=0.9, min_share=0.002)))

CFG = TrainConfig(
    scenario=SCENARIO,
    ppo=PPOConfig(num_envs=8, num_steps=32, num_updates=60, update_epochs=4,
                  num_minibatches=4, lr=3e-3, ent_coef=0.01),
    action=ActionConfig(kind="hier", n_groups=2, head_bins=0),
    net=NetConfig(hidden=32, low_hidden=32, conv_channels=4),
    num_seeds=3, log_every=60)
