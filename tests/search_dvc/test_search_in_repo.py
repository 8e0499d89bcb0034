"""A whole search in a real git + DVC repository: `pipeline search` records every finished trial,
and `dvc exp show` lists each with the searched spec field and its metrics."""

from __future__ import annotations

import yaml

from tests.search_dvc import experiments, make_repo


def test_every_finished_trial_of_a_search_is_listed_by_dvc_exp_show(tmp_path):
    repo = make_repo(tmp_path)
    (repo.root / "searches").mkdir()
    search = {
        "base": "../specs/tiny.yaml",
        "space": {"optimizer.lr": {"type": "choice", "values": [0.002, 0.0005]}},
        "sampler": {"type": "grid"},
    }
    (repo.root / "searches" / "lr.yaml").write_text(yaml.safe_dump(search))
    repo.commit("a search")
    out = repo.run("pipeline", "search", "searches/lr.yaml").stdout
    assert "recorded 2 DVC experiment(s)" in out, out

    exps = experiments(repo)
    assert {"lr-0000", "lr-0001"} <= set(exps), sorted(exps)
    seen = {}
    for name in ("lr-0000", "lr-0001"):
        data = exps[name]["data"]
        params = data["params"]["runs/tiny/spec.yaml"]["data"]
        metrics = data["metrics"]["runs/tiny/live/metrics.json"]["data"]
        seen[params["optimizer"]["lr"]] = metrics
        assert 0.0 <= metrics["val_accuracy"] <= 1.0
    assert set(seen) == {0.002, 0.0005}
    # a second run of the finished search records nothing twice
    again = repo.run("pipeline", "search", "searches/lr.yaml").stdout
    assert "recorded" not in again, again
    assert sorted(n for n in experiments(repo) if n.startswith("lr-")) == ["lr-0000", "lr-0001"]
