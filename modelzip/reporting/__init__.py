"""Reports: self-contained HTML and Markdown with plots."""
