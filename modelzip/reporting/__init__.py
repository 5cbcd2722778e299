"""Reports: one self-contained HTML page and a Markdown twin, with Matplotlib plots, from a
RUN_DIR (report.json, points.json, sensitivity.json, estimate.json, model.mzip) or a benchmark
results JSON."""

from modelzip.reporting.load import ReportInputs, load_inputs
from modelzip.reporting.write import write_report

__all__ = ["ReportInputs", "load_inputs", "write_report"]
