"""Models and data for tests, benchmarks and examples: the reference architectures (`zoo`), the
labelled shapes set and brief RT-DETR training (`zoo_shapes`), and realistic data and task metrics
for the third-party models of ../shared/models (`corpus`).

Nothing in the product imports this package: `import tao_qc` never loads torch for it. The names
specs and docs use (`tao_qc.zoo:RTDETRStyle`, `tao_qc.corpus:text_accuracy`,
`tao_qc.corpus:decode_yunet`) stay importable through the thin modules `tao_qc.zoo` and
`tao_qc.corpus`."""
