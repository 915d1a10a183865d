"""Exported models are programs: what a SavedModel may run before the package runs it.

A SavedModel is a TensorFlow graph, and a graph can read and write files (`ReadFile`,
`WriteFile`), list folders (`MatchingFiles`), call back into Python (`PyFunc`) or read
datasets, all when its signature is called. `check_saved_model` walks every node of the
graph and of every function in its library before `tf.saved_model.load` runs anything, and
refuses ops outside `ALLOWED_OPS`: the tensor maths, image decoding, control flow and
variable reads that this package's exports use. The save and restore functions that load the
variables (the SavedModel's saver) may also use `VARIABLE_IO_OPS`; nothing else may.

LiteRT and ONNX files are programs too; their runtimes run a fixed set of operators with no
file access of their own, but a crafted file can still exercise bugs in them. Load only
exported models you trust (docs/CONTRACTS.md).
"""

from __future__ import annotations

import os

# Ops of the package's own SavedModels (every backbone, with and without resizing and
# per-class thresholds) and their close relatives: tensor maths, image decoding, control
# flow and variables. Nothing here touches a file, the network or Python.
ALLOWED_OPS = frozenset({
    # graph plumbing and control flow
    "Const", "Placeholder", "PlaceholderWithDefault", "NoOp", "Identity", "IdentityN",
    "StopGradient", "PreventGradient", "PartitionedCall", "StatefulPartitionedCall", "If",
    "StatelessIf", "While", "StatelessWhile", "Case", "StatelessCase", "Assert",
    "CheckNumerics", "EnsureShape",
    # variables (in memory)
    "VarHandleOp", "ReadVariableOp", "AssignVariableOp", "AssignAddVariableOp",
    "AssignSubVariableOp", "VarIsInitializedOp", "DisableCopyOnRead",
    # element-wise and reductions
    "Abs", "Add", "AddN", "AddV2", "All", "Any", "ArgMax", "ArgMin", "Cast", "Ceil",
    "ClipByValue", "Cos", "Cumsum", "Div", "DivNoNan", "Equal", "Erf", "Exp", "Floor",
    "FloorDiv", "FloorMod", "Greater", "GreaterEqual", "IsFinite", "IsNan", "Less",
    "LessEqual", "Log", "Log1p", "LogicalAnd", "LogicalNot", "LogicalOr", "Max", "Maximum",
    "Mean", "Min", "Minimum", "Mod", "Mul", "MulNoNan", "Neg", "NotEqual", "OnesLike", "Pow",
    "Prod", "RealDiv", "Reciprocal", "Round", "Rsqrt", "Select", "SelectV2", "Sign", "Sin",
    "Sqrt", "Square", "SquaredDifference", "Sub", "Sum", "Tanh", "TruncateDiv", "ZerosLike",
    # neural network layers
    "AvgPool", "BatchMatMulV2", "BatchMatMulV3", "BiasAdd", "Conv2D",
    "DepthwiseConv2dNative", "Einsum", "Elu", "FusedBatchNormV3", "LeakyRelu", "MatMul",
    "MaxPool", "Relu", "Relu6", "Selu", "Sigmoid", "Softmax", "Softplus",
    # shapes, indexing and layout
    "BroadcastArgs", "BroadcastTo", "Concat", "ConcatV2", "ExpandDims", "Fill", "Gather",
    "GatherNd", "GatherV2", "LinSpace", "MirrorPad", "OneHot", "Pack", "Pad", "PadV2",
    "Range", "Rank", "Reshape", "ReverseV2", "ScatterNd", "Shape", "ShapeN", "Size",
    "Slice", "Split", "SplitV", "Squeeze", "StridedSlice", "TensorScatterUpdate", "Tile",
    "Transpose", "Unpack", "Where",
    # detection and images
    "CombinedNonMaxSuppression", "CropAndResize", "DecodeBmp", "DecodeGif", "DecodeImage",
    "DecodeJpeg", "DecodePng", "DecodeRaw", "ExtractJpegShape", "NonMaxSuppressionV3",
    "NonMaxSuppressionV4", "NonMaxSuppressionV5", "ResizeBilinear", "ResizeNearestNeighbor",
    "TopKV2",
    # strings (no I/O)
    "Substr", "StringLength", "StringJoin", "StaticRegexFullMatch", "RegexFullMatch",
    # tensor lists (while loops)
    "TensorListFromTensor", "TensorListGetItem", "TensorListLength", "TensorListReserve",
    "TensorListSetItem", "TensorListStack", "TensorListElementShape",
})
# File I/O that loading the variables needs: allowed only inside the saver's functions.
VARIABLE_IO_OPS = frozenset({"SaveV2", "RestoreV2", "MergeV2Checkpoints", "ShardedFilename"})

TRUST_HINT = ("SavedModels are programs: load only files you trust, and pass "
              "--trust_checkpoint (trust=True in Python) to run this one anyway")


def _saver_functions(meta_graph, functions) -> set:
    """Names of the functions the saver calls (directly or through nested calls)."""
    saver = meta_graph.saver_def
    entry = {name.split(":")[0] for name in (saver.save_tensor_name, saver.restore_op_name)
             if name}
    found, todo = set(), [node for node in meta_graph.graph_def.node if node.name in entry]
    while todo:
        node = todo.pop()
        for attr in node.attr.values():
            name = attr.func.name
            if name and name not in found and name in functions:
                found.add(name)
                todo.extend(functions[name].node_def)
    return found


def untrusted_ops(path) -> list:
    """`"Op (in where)"` for every op of the SavedModel at `path` outside the allow-list.

    Reads `saved_model.pb` only; nothing in the model runs.
    """
    from tensorflow.core.protobuf import saved_model_pb2

    model = saved_model_pb2.SavedModel()
    with open(os.path.join(os.fspath(path), "saved_model.pb"), "rb") as file:
        model.ParseFromString(file.read())
    found = set()
    for meta_graph in model.meta_graphs:
        functions = {f.signature.name: f for f in meta_graph.graph_def.library.function}
        saver = _saver_functions(meta_graph, functions)
        places = [("the graph", meta_graph.graph_def.node, ALLOWED_OPS)] + [
            (f"function {name}", function.node_def,
             ALLOWED_OPS | VARIABLE_IO_OPS if name in saver else ALLOWED_OPS)
            for name, function in functions.items()]
        for where, nodes, allowed in places:
            found.update(f"{node.op} (in {where})" for node in nodes if node.op not in allowed)
    return sorted(found)


def check_saved_model(path):
    """Raises ValueError naming the ops of the SavedModel at `path` outside the allow-list."""
    refused = untrusted_ops(path)
    if refused:
        shown = ", ".join(refused[:8]) + (f" and {len(refused) - 8} more" if len(refused) > 8
                                          else "")
        raise ValueError(f"{os.fspath(path)}: refusing to run this SavedModel: it holds ops "
                         f"that no retinanet export uses: {shown}. {TRUST_HINT}")
