"""`plot_sweep` groups lines by a swept key whose values are lists (e.g. `44_experiment.fine_tunes=[["self_instruct"]]`)."""
import matplotlib; matplotlib.use("Agg")
import pandas as pd
from selfinstruct_nb.sweep import plot_sweep

def test_plot_sweep_with_list_valued_hue(tmp_path):
    df = pd.DataFrame({"status": ["ok"] * 4, "lr": [1e-5, 3e-5, 1e-5, 3e-5],
                       "fine_tunes": [["self_instruct"], ["self_instruct"], ["seeds"], ["seeds"]], "loss": [1.2, 1.3, 1.5, 1.4]})
    fig = plot_sweep(df, "lr", ["loss"], hue="fine_tunes", path=tmp_path/"sweep")
    labels = sorted(l.get_label() for l in fig.axes[0].get_lines())
    assert labels == ['fine_tunes=["seeds"]', 'fine_tunes=["self_instruct"]'] and (tmp_path/"sweep.png").exists()
