"""Leak audit of a task's contract, before it is frozen.

(The checks are added below.)
"""

from __future__ import annotations

# Modules that ship or download public datasets: a train() importing one can reload the task's
# data and look the labels up. Shared with the static scan of train code (experiments/scan.py).
DATASET_MODULES = (
    "sklearn.datasets", "seaborn.load_dataset", "seaborn.get_dataset_names", "openml",
    "tensorflow_datasets", "torchvision.datasets", "torchtext.datasets", "keras.datasets",
    "tensorflow.keras.datasets", "datasets", "statsmodels.datasets", "pmlb", "vega_datasets", "pydataset",
    "ucimlrepo", "kaggle", "kagglehub", "plotly.data", "bokeh.sampledata", "pandas_datareader", "yellowbrick.datasets",
    "mlxtend.data", "imblearn.datasets", "lightgbm.datasets", "catboost.datasets", "shap.datasets",
)
