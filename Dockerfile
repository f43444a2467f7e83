# The HTTP service (imgclf.serve) with the exported model, on requirements-serve.txt: no TensorFlow.
#   dvc repro                                   # writes models/tflite (and models/onnx)
#   docker build -t imgclf-serve .
#   docker run --rm -p 8000:8000 imgclf-serve   # then http://127.0.0.1:8000/
# IMGCLF_MODEL picks another file in the image, e.g. /app/models/onnx/model.onnx.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# No apt packages: the OpenCV headless and onnxruntime wheels link only libc, libstdc++ and zlib (ldd).
WORKDIR /app
COPY requirements-serve.txt .
RUN pip install -r requirements-serve.txt

RUN useradd --create-home --uid 10001 imgclf
COPY imgclf/ imgclf/
COPY params.yaml .
COPY models/tflite/ models/tflite/
COPY models/onnx/ models/onnx/

USER imgclf
ENV IMGCLF_MODEL=/app/models/tflite/model_int8.tflite
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD python -c "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status != 200)"
CMD ["python", "-m", "imgclf.serve", "--host", "0.0.0.0", "--port", "8000"]
