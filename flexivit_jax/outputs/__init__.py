"""What a run shows and leaves behind; each format has one owner here.

  runlog      metrics.jsonl and TensorBoard (process 0), trimmed on resume
  run_config  config.json: written once per run, read by evaluate, compare and the analyses
  console     the progress bar, or plain lines in logs, with images/s and ETA
  eval_names  eval metric names (`eval/NAME/LABEL/prec@1`) and the curves read back from them
  tables      the one text-table formatter; plots: the one matplotlib set-up
  eval_files  eval.json / eval.csv of the evaluate CLI; atomic: whole-file writes, local or gs://
"""
