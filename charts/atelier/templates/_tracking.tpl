{{/*
Helpers of the MLflow tracking server (tracking.yaml), the tune Job (tune.yaml) and the
bundled PostgreSQL they may share with the drift sidecars (drift-store.yaml).
*/}}

{{/* "true" when any component keeps its data in the bundled PostgreSQL. */}}
{{- define "atelier.postgresqlEnabled" -}}
{{- $drift := and .Values.drift.enabled (eq .Values.drift.store.type "postgresql") -}}
{{- $tracking := and .Values.tracking.enabled (eq .Values.tracking.backendStore.type "postgresql") -}}
{{- $tune := and .Values.tune.enabled (eq .Values.tune.storage.type "postgresql") -}}
{{- if or $drift $tracking $tune -}}true{{- end -}}
{{- end -}}

{{/* The components whose pods reach the bundled PostgreSQL (its NetworkPolicy's peers). */}}
{{- define "atelier.postgresqlClients" -}}
{{- $out := list -}}
{{- if and .Values.drift.enabled (eq .Values.drift.store.type "postgresql") -}}
{{- $out = append $out "serving" -}}
{{- end -}}
{{- if and .Values.tracking.enabled (eq .Values.tracking.backendStore.type "postgresql") -}}
{{- $out = append $out "tracking" -}}
{{- end -}}
{{- if and .Values.tune.enabled (eq .Values.tune.storage.type "postgresql") -}}
{{- $out = append $out "tune" -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* The tracking server's Service name, and the URI the Jobs log to (the Service's short name: k8s/ may be applied to any namespace). */}}
{{- define "atelier.trackingName" -}}
{{- include "atelier.componentName" (list . "tracking") -}}
{{- end -}}

{{- define "atelier.trackingUri" -}}
{{- printf "http://%s:%v" (include "atelier.trackingName" .) .Values.tracking.port -}}
{{- end -}}

{{/*
Environment of every container that may track (train, archive, the tune steps): the server's
URI when tracking.enabled; otherwise ATELIER_TRACKING=off, said out loud, so that `atelier
train` does not fall back to its local SQLite store inside the pod's scratch volume (lost
with the pod, and read by nobody).
*/}}
{{- define "atelier.trackingEnv" -}}
{{- if .Values.tracking.enabled -}}
- name: MLFLOW_TRACKING_URI
  value: {{ include "atelier.trackingUri" . }}
- name: ATELIER_TRACKING
  value: required
{{- else -}}
- name: ATELIER_TRACKING
  value: "off"
{{- end -}}
{{- end -}}

{{/*
An init container that waits (up to 10 minutes) until the tracking server answers /health:
at an install the Jobs start at once while the server is still migrating its database, and
`atelier train` stops when the server does not answer (exit 10). Runs Python from the
container's image. Usage: include "atelier.waitForTracking" (list . $image $pullPolicy $securityContext)
*/}}
{{- define "atelier.waitForTracking" -}}
{{- $root := index . 0 -}}
- name: wait-for-tracking
  image: {{ index . 1 }}
  imagePullPolicy: {{ index . 2 }}
  command: [python, -c]
  args:
    - |
      import os, sys, time, urllib.request
      url = os.environ["MLFLOW_TRACKING_URI"] + "/health"
      for _ in range(120):
          try:
              with urllib.request.urlopen(url, timeout=5) as r:
                  if r.status == 200:
                      sys.exit(0)
          except OSError as exc:
              print(f"{url}: {exc}", flush=True)
          time.sleep(5)
      sys.exit(f"{url} did not answer in 10 minutes: is the tracking server running?")
  env:
    - name: MLFLOW_TRACKING_URI
      value: {{ include "atelier.trackingUri" $root }}
  securityContext:
    {{- include "atelier.containerSecurityContext" (index . 3) | nindent 4 }}
  resources:
    {{- include "atelier.resources" $root.Values.tracking.init.resources | nindent 4 }}
{{- end -}}

{{/*
An init container that creates a database in the bundled PostgreSQL unless it exists. The
official image creates only POSTGRES_DB, and only when its data directory is new: an init
script (/docker-entrypoint-initdb.d) would never run for an installation whose PostgreSQL is
already initialised (the drift store's), so the database is made by the pods that need it. A
session advisory lock serialises pods that start at once (a tune Job's workers), and the
CREATE runs only when pg_database has no such name: idempotent. Waits up to 10 minutes for
the server (an install starts it with everything else).
Usage: include "atelier.createDatabase" (list . "mlflow" $securityContext)
*/}}
{{- define "atelier.createDatabase" -}}
{{- $root := index . 0 -}}
{{- $db := index . 1 -}}
{{- $pg := $root.Values.drift.store.postgresql -}}
- name: create-database
  image: {{ include "atelier.image" (list $root $pg.image) }}
  imagePullPolicy: {{ $pg.image.pullPolicy }}
  command: [bash, -ec]
  args:
    - |
      for i in $(seq 120); do pg_isready --quiet && break; echo "waiting for $PGHOST"; sleep 5; done
      psql --no-psqlrc --quiet --output=/dev/null -v ON_ERROR_STOP=1 -v db="$ATELIER_DATABASE" <<'SQL'
      SELECT pg_advisory_lock(hashtext('atelier create database'));
      SELECT format('CREATE DATABASE %I', :'db')
       WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db')\gexec
      SQL
      echo "database $ATELIER_DATABASE is there"
  env:
    - name: ATELIER_DATABASE
      value: {{ $db | quote }}
    - name: PGHOST
      value: {{ include "atelier.postgresqlName" $root }}
    - name: PGPORT
      value: "5432"
    - name: PGUSER
      value: {{ $pg.username | quote }}
    - name: PGDATABASE
      value: {{ $pg.database | quote }}
    - name: PGCONNECT_TIMEOUT
      value: "5"
    - name: PGPASSWORD
      valueFrom:
        secretKeyRef:
          name: {{ include "atelier.postgresqlName" $root }}
          key: password
    - name: HOME
      value: /tmp
  securityContext:
    {{- include "atelier.containerSecurityContext" (index . 2) | nindent 4 }}
  resources:
    {{- include "atelier.resources" $root.Values.tracking.init.resources | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
{{- end -}}

{{/*
A database URL for a SQLAlchemy client, as env var `name`: the bundled PostgreSQL's database
`db` (the password from the chart's Secret, through ATELIER_POSTGRESQL_PASSWORD, which must
come first), or an external URL from the user's Secret.
Usage: include "atelier.databaseUrlEnv" (list . "MLFLOW_BACKEND_STORE_URI" $store)
where $store has type, database and external.{existingSecret,urlKey}.
*/}}
{{- define "atelier.databaseUrlEnv" -}}
{{- $root := index . 0 -}}
{{- $name := index . 1 -}}
{{- $store := index . 2 -}}
{{- if eq $store.type "postgresql" -}}
{{- $pg := $root.Values.drift.store.postgresql -}}
- name: ATELIER_POSTGRESQL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "atelier.postgresqlName" $root }}
      key: password
- name: {{ $name }}
  value: {{ printf "postgresql+psycopg://%s:$(ATELIER_POSTGRESQL_PASSWORD)@%s:5432/%s" $pg.username (include "atelier.postgresqlName" $root) $store.database }}
{{- else -}}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ $store.external.existingSecret }}
      key: {{ $store.external.urlKey }}
{{- end -}}
{{- end -}}

{{/* The tune Job's base config (tune.config, or training.config) and its study name. */}}
{{- define "atelier.tuneConfig" -}}
{{- toYaml (default .Values.training.config .Values.tune.config) -}}
{{- end -}}

{{- define "atelier.tuneHash" -}}
{{- dict "c" (include "atelier.tuneConfig" .) "s" .Values.tune.space "t" .Values.tune.trials "f" .Values.tune.folds | toJson | sha256sum | trunc 8 -}}
{{- end -}}

{{- define "atelier.tuneStudy" -}}
{{- default (printf "%s-%s" .Values.model.name (include "atelier.tuneHash" .)) .Values.tune.study -}}
{{- end -}}

{{/* Torch threads of a tune worker: its CPU limit, rounded down, at least 1. */}}
{{- define "atelier.tuneThreads" -}}
{{- $cpu := toString (dig "limits" "cpu" "1" .Values.tune.resources) -}}
{{- $n := 1 -}}
{{- if hasSuffix "m" $cpu -}}
{{- $n = div (atoi (trimSuffix "m" $cpu)) 1000 -}}
{{- else -}}
{{- $n = floor (float64 $cpu) | int -}}
{{- end -}}
{{- max 1 $n -}}
{{- end -}}

{{/* Checks of tracking and tune values the schema cannot express. */}}
{{- define "atelier.validateTracking" -}}
{{- $t := .Values.tracking -}}
{{- if $t.enabled -}}
{{- if and (eq $t.backendStore.type "external") (not $t.backendStore.external.existingSecret) -}}
{{- fail "tracking.backendStore.external.existingSecret: required when tracking.backendStore.type is external (an existing Secret whose urlKey holds the database URL)" -}}
{{- end -}}
{{- if and (eq $t.artifacts.type "objectStore") (not $t.artifacts.objectStore.uri) -}}
{{- fail "tracking.artifacts.objectStore.uri: required when tracking.artifacts.type is objectStore (s3://<bucket>/<prefix>)" -}}
{{- end -}}
{{- end -}}
{{- $u := .Values.tune -}}
{{- if $u.enabled -}}
{{- if and (eq $u.storage.type "external") (not $u.storage.external.existingSecret) -}}
{{- fail "tune.storage.external.existingSecret: required when tune.storage.type is external (an existing Secret whose urlKey holds the database URL)" -}}
{{- end -}}
{{- if gt (int $u.workers) (int $u.trials) -}}
{{- fail (printf "tune.workers: %v workers for %v trials would leave workers idle; set tune.workers to at most tune.trials" $u.workers $u.trials) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Environment, security and mounts of the tune pod's atelier containers. The study's storage
URL is ATELIER_TUNE_STORAGE, which `atelier tune`, tune-worker and tune-report read when
--storage is not given: the password stays off every command line.
*/}}
{{- define "atelier.tuneContainerCommon" -}}
env:
  {{- include "atelier.databaseUrlEnv" (list . "ATELIER_TUNE_STORAGE" .Values.tune.storage) | nindent 2 }}
  - name: ATELIER_TUNE_INDEX
    valueFrom:
      fieldRef:
        fieldPath: metadata.annotations['batch.kubernetes.io/job-completion-index']
  {{- include "atelier.trackingEnv" . | nindent 2 }}
  - name: OMP_NUM_THREADS
    value: {{ include "atelier.tuneThreads" . | quote }}
  - name: HOME
    value: /tmp
  - name: TMPDIR
    value: /tmp
  - name: MPLCONFIGDIR
    value: /tmp/matplotlib
  - name: PYTHONDONTWRITEBYTECODE
    value: "1"
securityContext:
  {{- include "atelier.containerSecurityContext" .Values.training.securityContext | nindent 2 }}
volumeMounts:
  - name: config
    mountPath: /etc/atelier
    readOnly: true
  - name: results
    mountPath: /mnt/tune
  - name: tmp
    mountPath: /tmp
{{- end -}}
