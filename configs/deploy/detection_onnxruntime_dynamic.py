# mmdeploy: an mmdet detector to ONNX Runtime with dynamic batch and image size (tools/deploy/ort_check.py).
# Written for cbam_det (mmdeploy 1.3.1's own deploy configs are not copied): detections come out as
# dets (N, K, 5: x1, y1, x2, y2, score) and labels (N, K) after mmdeploy's ONNX NMS.
onnx_config = dict(
    type='onnx',
    export_params=True,
    keep_initializers_as_inputs=False,
    opset_version=11,
    save_file='end2end.onnx',
    input_names=['input'],
    output_names=['dets', 'labels'],
    input_shape=None,  # dynamic: the test pipeline decides each image's size
    optimize=True,
    dynamic_axes=dict(
        input={0: 'batch', 2: 'height', 3: 'width'},
        dets={0: 'batch', 1: 'num_dets'},
        labels={0: 'batch', 1: 'num_dets'},
    ),
)
codebase_config = dict(
    type='mmdet',
    task='ObjectDetection',
    model_type='end2end',
    # as mmdet's test_cfg of the shipped detectors: per-class NMS at IoU 0.5 (YOLOX: 0.65, set by the check)
    post_processing=dict(
        score_threshold=0.05,
        confidence_threshold=0.005,
        iou_threshold=0.5,
        max_output_boxes_per_class=200,
        pre_top_k=5000,
        keep_top_k=100,
        background_label_id=-1,
    ),
)
backend_config = dict(type='onnxruntime')
