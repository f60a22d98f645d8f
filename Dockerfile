# TensorFlow Serving image with an exported Mask R-CNN baked in (see serving/README.md).
#
#   mask-rcnn export --config configs/shapes.yaml --model-dir runs/shapes1 \
#       --export-base exported/mask_rcnn
#   docker build -t mask-rcnn-serving .
#   docker run --rm -p 8500:8500 -p 8501:8501 mask-rcnn-serving
#
# Pinned to the TensorFlow Serving release of the TensorFlow that exports the model (2.21, as
# pinned in setup.cfg along with tensorflow-serving-api 2.21.0): a SavedModel may use any op of
# the TensorFlow that wrote it, and only a server built on the same or a newer TensorFlow has
# those ops. Move this tag with setup.cfg's tensorflow pin, never to "latest".
ARG TF_SERVING_VERSION=2.21.0
FROM tensorflow/serving:${TF_SERVING_VERSION}

# The model's name in requests (model_spec.name), and the export base folder (version folders
# 1/, 2/, ...) inside the build context.
ARG MODEL_NAME=mask_rcnn
ARG MODEL_DIR=exported/mask_rcnn
ENV MODEL_NAME=${MODEL_NAME}

# The image's entrypoint runs tensorflow_model_server --port=8500 --rest_api_port=8501
# --model_name=${MODEL_NAME} --model_base_path=${MODEL_BASE_PATH}/${MODEL_NAME} (MODEL_BASE_PATH
# is /models), followed by the CMD arguments below.
COPY ${MODEL_DIR} /models/${MODEL_NAME}
COPY serving/batching_parameters.txt /etc/tensorflow_serving/batching_parameters.txt

# gRPC (MaskRCNNClient, `mask-rcnn client`) and REST.
EXPOSE 8500 8501

# The warm-up records written by the export (assets.extra/tf_serving_warmup_requests) run before
# the model is marked AVAILABLE, so the first user request does not pay for graph warm-up.
CMD ["--enable_batching", \
     "--batching_parameters_file=/etc/tensorflow_serving/batching_parameters.txt", \
     "--enable_model_warmup=true"]
