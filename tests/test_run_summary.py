"""The lines train.py prints when a run ends, from planted metrics and run folders."""

from lwtakit.io import write_csv
from lwtakit.run_summary import final_accuracy, summary_lines


def test_lwta_run_summary_names_every_figure_and_the_next_step(tmp_path):
    rows = [{"epoch": e, "step": 10 * e, "layer": layer, "unit": u, "method": "invert", "label": "x",
             "heldout_f1": 0.1 * e + 0.01 * u} for e in (1, 2) for layer in ("l3", "fc") for u in range(2)]
    write_csv(tmp_path / "labels.csv", rows, list(rows[0]))
    (tmp_path / "wandb" / "offline-run-1").mkdir(parents=True)
    metrics = {"test/acc_sample": 0.9671, "test/acc_argmax": 0.934, "test/acc_mc": 0.978,
               "sparsity/a/active_fraction": 0.5, "sparsity/b/active_fraction": 0.25, "train/loss": 0.1}
    lines = summary_lines(metrics, tmp_path)
    assert lines[0] == f"run: {tmp_path}"
    assert lines[1] == "test accuracy: sample 96.7% · argmax 93.4% · mc 97.8%"
    assert lines[2] == "active fraction: 0.375 (mean over 2 activation layers)"
    # the last dissection only (epoch 2): F1 0.20, 0.21, 0.20, 0.21
    assert lines[3] == f"labels: 4 units in 2 layers at epoch 2, mean held-out F1 0.205 ({tmp_path / 'labels.csv'})"
    assert lines[4].startswith("W&B (offline): upload with  wandb sync")
    assert lines[5].startswith(f"next: analyze.py dissect --ckpt {tmp_path} ")


def test_dense_run_without_dissection_or_wandb(tmp_path):
    lines = summary_lines({"test/acc_dense": 0.989}, tmp_path)
    assert lines[1] == "test accuracy: 98.9%" and len(lines) == 3 and lines[2].startswith("next: ")


def test_accuracy_reads_dense_runs_by_their_new_and_their_old_metric_name():
    assert final_accuracy({"test/acc_dense": 0.98, "val/acc_dense": 0.97}) == {"dense": 0.98}
    assert final_accuracy({"test/acc_argmax": 0.99}) == {"dense": 0.99}  # a run logged before issue 11
    assert final_accuracy({"val/acc_argmax": 0.97}, stage="val") == {"dense": 0.97}
    lwta = {"test/acc_sample": 0.9, "test/acc_argmax": 0.8}
    assert final_accuracy(lwta) == {"sample": 0.9, "argmax": 0.8}
