"""The accuracy-latency Pareto frontier: on a hand-made point set it is exactly the known one, and a
run's metrics.json backends become points without the legacy aliases or unmeasured rows."""

from __future__ import annotations

import json
import random

from pipeline.measurement.pareto import ParetoPoint, backend_points, pareto_front, pareto_rows, write_pareto


def point(label: str, latency: float, score: float) -> ParetoPoint:
    return ParetoPoint(label, latency, score)


# Known by hand: A fastest; B slower but more accurate; C dominated by B (slower, less accurate);
# D most accurate; E as fast as B but less accurate (dominated); F equal to D (both stay).
HAND_MADE = [point("A", 1.0, 70.0), point("B", 2.0, 75.0), point("C", 3.0, 74.0), point("D", 4.0, 80.0),
             point("E", 2.0, 72.0), point("F", 4.0, 80.0), point("G", 0.5, 60.0), point("H", 5.0, 79.0)]


def test_the_frontier_of_a_hand_made_set_is_the_known_one_fastest_first():
    assert [p.label for p in pareto_front(HAND_MADE)] == ["G", "A", "B", "D", "F"]


def test_a_point_off_the_frontier_names_the_fastest_frontier_point_that_dominates_it():
    rows = {row["label"]: row for row in pareto_rows(HAND_MADE)}
    assert rows["C"]["dominated_by"] == "B" and not rows["C"]["on_front"]
    assert rows["E"]["dominated_by"] == "B"  # same latency, less accurate
    assert rows["H"]["dominated_by"] == "D"
    assert rows["D"]["on_front"] and rows["D"]["dominated_by"] is None
    assert [row["label"] for row in pareto_rows(HAND_MADE)][:2] == ["G", "A"]


def test_no_frontier_point_is_dominated_and_every_other_point_is():
    rng = random.Random(0)
    for _ in range(50):
        points = [point(str(i), rng.choice([1.0, 2.0, 3.0, rng.random() * 5]), rng.choice([50.0, rng.random() * 100]))
                  for i in range(rng.randint(1, 12))]
        front = pareto_front(points)
        assert front, "a non-empty set has a frontier"
        for p in points:
            dominated = any(q.dominates(p) for q in points)
            assert (p in front) != dominated


def test_metrics_backends_become_points_without_aliases_or_unmeasured_rows():
    backends = {
        "pytorch-fp32": {"backend": "pytorch", "precision": "fp32", "miou": 70.0, "latency_ms": {"p50": 3.0}},
        "pytorch": {"backend": "pytorch", "precision": "fp32", "miou": 70.0, "latency_ms": {"p50": 3.0}},
        "onnxruntime-int8": {"backend": "onnxruntime", "precision": "int8", "miou": 69.5, "latency_ms": {"p50": 0.3}},
        "tensorrt-int8": {"status": "skipped", "reason": "no TensorRT"},
        "onnxruntime-fp32": {"backend": "onnxruntime", "precision": "fp32", "miou": 70.0, "latency_ms": {}},
    }
    points = backend_points(backends, "miou", prefix="tat / ", details={"method": "tat"})
    assert [p.label for p in points] == ["tat / pytorch-fp32", "tat / onnxruntime-int8"]
    assert points[1].details == {"method": "tat", "backend": "onnxruntime", "precision": "int8"}


def test_the_frontier_is_written_as_json_and_markdown(tmp_path):
    json_path, md_path = write_pareto(tmp_path, pareto_rows(HAND_MADE), {"metric": "miou"})
    written = json.loads(json_path.read_text())
    assert written["front"] == ["G", "A", "B", "D", "F"] and written["metric"] == "miou"
    assert len(written["rows"]) == len(HAND_MADE)
    markdown = md_path.read_text()
    assert "| C | 3.00 | 74.00 | no | B |" in markdown and "- metric: miou" in markdown


def test_frontier_labels_of_nearby_points_are_stacked_a_line_apart_and_distant_ones_stay_put():
    import matplotlib.pyplot as plt

    from pipeline.reporting.charts import label_lifts

    figure, ax = plt.subplots(figsize=(6, 4))
    xy = [(0.27, 83.2), (0.27, 82.8), (0.28, 83.0), (3.5, 66.0)]
    ax.scatter(*zip(*xy))
    lifts = label_lifts(xy, ax, fontsize=8)
    to_points = 72.0 / figure.dpi
    label_y = sorted(ax.transData.transform(p)[1] * to_points + lift for p, lift in zip(xy[:3], lifts))
    assert all(upper - lower >= 8 * 1.3 - 1e-6 for lower, upper in zip(label_y, label_y[1:]))
    assert lifts[0] == 0.0 and lifts[3] == 0.0  # the top label and a far-away one keep their place
    plt.close(figure)
