FROM python:3.11-slim
WORKDIR /app
# torch first and pinned (CPU wheel index), so pip never resolves the CUDA build.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY streamrec streamrec
COPY streams streams
COPY features features
COPY models models
COPY index index
COPY online online
COPY offline offline
COPY benchmarks benchmarks
RUN pip install --no-cache-dir .
# Compile the Thompson-sampling kernels into numba's cache now, not at each first start.
ENV NUMBA_CACHE_DIR=/app/.numba-cache
RUN python -c "from models import thompson_kernel; thompson_kernel.warm()"
