# MLflow tracking server for deploy/compose: PostgreSQL backend store (psycopg2) and an S3/MinIO
# artifact store (boto3). Versions match medseg's constraints.txt, so the server and the medseg
# clients run the same MLflow (3.17.x).
FROM python:3.11-slim

ARG MLFLOW_VERSION=3.17.2
ARG PSYCOPG2_VERSION=2.9.13
ARG BOTO3_VERSION=1.44.5

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1

RUN pip install "mlflow==${MLFLOW_VERSION}" "psycopg2-binary==${PSYCOPG2_VERSION}" \
        "boto3==${BOTO3_VERSION}"

RUN useradd --create-home --uid 10001 mlflow
USER 10001
WORKDIR /home/mlflow
EXPOSE 5000
ENTRYPOINT ["mlflow", "server"]
