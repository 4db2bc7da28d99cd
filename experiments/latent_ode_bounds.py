"""How well can anything extrapolate the validation spirals? Reference errors without learning.

Every spiral follows one known family (``latent_ode.spiral_paths``): the rates (``spiral_b``,
1 rad per time unit) and the two centres are shared by all spirals, so a model can learn them
from the training split; only the direction, r0 and phi0 are the spiral's own. Scored like
``latent_ode.scores`` (extrapolation RMSE against the noise-free path), validation only:

- ``last``: repeat the last observation (a trivial reference).
- ``family``: the family known; fit direction, r0 and phi0 to the noisy window by least squares
  and extrapolate. About the best any model can do from these windows: a floor for Table 2.
- ``family_free_rates``: as ``family``, but the growth rate and angular speed are fitted per
  spiral too (Gauss-Newton from the ``family`` fit): a model that did not learn the shared rates.

    python -m experiments.latent_ode_bounds [--out results/latent_ode]
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from configs.latent_ode import LatentODEConfig
from experiments import latent_ode
from experiments.common import report

N_OBS = (30, 50, 100)
LABELS = {
    "last": "last observation, held",
    "family": "family fit: direction, r0, phi0",
    "family_free_rates": "family fit, rates free too",
    "direction_right": "fraction with the direction right",
}


def _unit(angle):
    return np.stack([np.cos(angle), np.sin(angle)], axis=-1)


def fit_family(cfg: LatentODEConfig, x_SND, t_SN):
    """Least-squares (clockwise, r0, phi0) per spiral, rates and centres known: for a given
    phi0 the best r0 is linear, so phi0 is searched on a grid and refined on a finer one."""
    best = None
    for clockwise in (False, True):
        sign = -1.0 if clockwise else 1.0
        u = x_SND - np.array([sign * cfg.spiral_offset, 0.0])  # relative to the centre
        phi0 = np.linspace(0, 2 * np.pi, 720, endpoint=False)[None].repeat(len(u), 0)
        for width in (2 * np.pi / 720, 2 * np.pi / 720 / 200):
            e = _unit(phi0[:, :, None] + sign * t_SN[:, None])  # (S, K, N, 2)
            radial = np.einsum("snd,sknd->skn", u, e) - cfg.spiral_b * t_SN[:, None]
            r0 = radial.mean(-1)  # (S, K)
            fit = (r0[..., None] + cfg.spiral_b * t_SN[:, None])[..., None] * e
            sse = ((u[:, None] - fit) ** 2).sum((-1, -2))
            k = sse.argmin(1)
            rows = np.arange(len(u))
            centre_phi, sse_k, r0_k = phi0[rows, k], sse[rows, k], r0[rows, k]
            phi0 = centre_phi[:, None] + np.linspace(-width, width, 201)[None]
        cand = dict(clockwise=np.full(len(u), clockwise), r0=r0_k, phi0=centre_phi, sse=sse_k)
        if best is None:
            best = cand
        else:
            better = cand["sse"] < best["sse"]
            best = {key: np.where(better, cand[key], best[key]) for key in best}
    best["b"] = np.full(len(x_SND), cfg.spiral_b)
    best["omega"] = np.ones(len(x_SND))
    return best


def family_path(cfg: LatentODEConfig, p, ts_ST):
    """Positions (S, T, 2) of the fitted spirals at times ``ts_ST``."""
    sign = np.where(p["clockwise"], -1.0, 1.0)[:, None]
    r = p["r0"][:, None] + p["b"][:, None] * ts_ST
    pos = r[..., None] * _unit(p["phi0"][:, None] + sign * p["omega"][:, None] * ts_ST)
    return pos + np.stack([sign * cfg.spiral_offset, 0 * sign], axis=-1)


def refit_rates(cfg: LatentODEConfig, p, x_SND, t_SN, iters=30):
    """Gauss-Newton (damped) on (r0, phi0, b, omega) per spiral, direction kept from ``p``."""
    p = dict(p)
    sign = np.where(p["clockwise"], -1.0, 1.0)[:, None]
    theta = np.stack([p["r0"], p["phi0"], p["b"], p["omega"]], -1)
    for _ in range(iters):
        r0, phi0, b, omega = theta.T
        ang = phi0[:, None] + sign * omega[:, None] * t_SN
        r = r0[:, None] + b[:, None] * t_SN
        e, e_perp = _unit(ang), _unit(ang + np.pi / 2)
        jac = np.stack(
            [e, r[..., None] * e_perp, t_SN[..., None] * e, (r * sign * t_SN)[..., None] * e_perp],
            -1,
        ).reshape(len(theta), -1, 4)
        resid = (family_path(cfg, _params(p, theta), t_SN) - x_SND).reshape(len(theta), -1)
        jtj = jac.transpose(0, 2, 1) @ jac
        jtj += 1e-6 * np.eye(4) * np.trace(jtj, axis1=1, axis2=2)[:, None, None]
        theta = theta - np.linalg.solve(jtj, (jac.transpose(0, 2, 1) @ resid[..., None]))[..., 0]
    return _params(p, theta)


def _params(p, theta):
    return p | dict(r0=theta[:, 0], phi0=theta[:, 1], b=theta[:, 2], omega=theta[:, 3])


def bounds(n_obs: int) -> dict:
    """Validation extrapolation RMSE of the three references at ``n_obs`` observations."""
    cfg = LatentODEConfig(n_obs=n_obs)
    val = latent_ode.make_split(cfg, "val")
    x, t = (a.astype(np.float64) for a in val.observed())
    truth = val.clean[:, cfg.n_grid :]
    future = np.broadcast_to(val.ts[cfg.n_grid :].astype(np.float64), truth.shape[:2])
    family = fit_family(cfg, x, t)
    free = refit_rates(cfg, family, x, t)
    last = np.broadcast_to(x[:, -1:], truth.shape)
    true_cw = np.mean(family["clockwise"] == val.clockwise)
    return dict(
        n_obs=n_obs,
        last=latent_ode.rmse(last, truth),
        family=latent_ode.rmse(family_path(cfg, family, future), truth),
        family_free_rates=latent_ode.rmse(family_path(cfg, free, future), truth),
        direction_right=float(true_cw),
    )


@dataclasses.dataclass(frozen=True)
class BoundsArgs:
    out: str = ""  # also write bounds_val.md into this folder ("": print only)


def table(rows: list[dict]) -> str:
    """One row per reference, one column per n (the validation extrapolation RMSE)."""
    by_label = [
        dict(label=label, **{f"n{r['n_obs']}": r[key] for r in rows})
        for key, label in LABELS.items()
    ]
    columns = [("label", "validation extrapolation RMSE", "{}")]
    columns += [(f"n{n}", f"n = {n}", "{:.4f}") for n in N_OBS]
    return (
        report.markdown_table(by_label, [(k, h, report.number(spec)) for k, h, spec in columns])
        + "\n"
    )


def run(args: BoundsArgs) -> list[dict]:
    """``python -m experiments.latent_ode bounds [--out DIR]``: the references at every n."""
    rows = [bounds(n) for n in N_OBS]
    text = table(rows)
    print(text)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "bounds_val.md").write_text(text)
    return rows
