"""What tao-qc knows about graphs: the canonical text form (`textform`), facts read from a graph
(`graph_facts`), open sizes (`shapes`), the fields a model carries besides its computation
(`model_fields`), and the protobuf/IR helpers of the pipeline's edges (`protos`)."""
