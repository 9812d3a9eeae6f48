{{/*
The training Job spec, shared by the Job and the CronJob.

pvc store:    init "train" -> main "archive" (writes the new version straight into the claim)
object store: init "fetch-store" (CURRENT.json and every version's model_card.json, so the
              next version number is right) -> init "train" -> init "archive" (into a local
              copy) -> init "publish-version" (versions/<v>/, --immutable) -> main
              "publish-current" (the root's current copy, last, so readers never see a
              current pointer before its version exists).
Exit codes 2 (bad config), 3 (bad data), 4 (below the quality gate) and 5 (archive refused)
fail the Job at once: retrying cannot change them.
*/}}
{{- define "atelier.trainingJobSpec" -}}
{{- $t := .Values.training -}}
{{- $object := eq .Values.modelStore.type "objectStore" -}}
backoffLimit: {{ $t.backoffLimit }}
activeDeadlineSeconds: {{ $t.activeDeadlineSeconds }}
{{- if ne $t.ttlSecondsAfterFinished nil }}
ttlSecondsAfterFinished: {{ $t.ttlSecondsAfterFinished }}
{{- end }}
podFailurePolicy:
  rules:
    - action: FailJob
      onExitCodes:
        operator: In
        values: [2, 3, 4, 5]
    - action: Ignore
      onPodConditions:
        - type: DisruptionTarget
          status: "True"
template:
  metadata:
    labels:
      {{- include "atelier.selectorLabels" (list . "training") | nindent 6 }}
      {{- with $t.podLabels }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    {{- with $t.podAnnotations }}
    annotations:
      {{- toYaml . | nindent 6 }}
    {{- end }}
  spec:
    restartPolicy: Never
    serviceAccountName: {{ include "atelier.serviceAccountName" (list . "training") }}
    automountServiceAccountToken: false
    securityContext:
      {{- include "atelier.podSecurityContext" $t.podSecurityContext | nindent 6 }}
    {{- include "atelier.imagePullSecrets" (list . 4) }}
    initContainers:
      {{- if .Values.tracking.enabled }}
      {{- include "atelier.waitForTracking" (list . (include "atelier.image" (list . $t.image)) $t.image.pullPolicy $t.securityContext) | nindent 6 }}
      {{- end }}
      {{- if $object }}
      - name: fetch-store
        {{- include "atelier.rcloneContainer" . | nindent 8 }}
        args:
          - copy
          - {{ include "atelier.rcloneRoot" . }}
          - /mnt/store
          - --include
          - CURRENT.json
          - --include
          - versions/*/model_card.json
      {{- end }}
      - name: train
        image: {{ include "atelier.image" (list . $t.image) }}
        imagePullPolicy: {{ $t.image.pullPolicy }}
        command: [atelier]
        args:
          - train
          - --config
          - /etc/atelier/train.yaml
          - --out
          - /work/run
          {{- if $t.imageFolder.enabled }}
          - --set
          - data.source=folder
          - --set
          - {{ printf "data.path=%s" (trimSuffix "/" (printf "/data/%s" $t.imageFolder.subPath)) | quote }}
          {{- end }}
          {{- range $t.set }}
          - --set
          - {{ . | quote }}
          {{- end }}
        {{- include "atelier.trainingContainerCommon" . | nindent 8 }}
        resources:
          {{- toYaml $t.resources | nindent 10 }}
      {{- if $object }}
      - name: archive
        {{- include "atelier.archiveContainer" . | nindent 8 }}
      - name: publish-version
        {{- include "atelier.rcloneContainer" . | nindent 8 }}
        args:
          - copy
          - /mnt/store/versions
          - {{ printf "%s/versions" (include "atelier.rcloneRoot" .) }}
          - --immutable
      {{- end }}
    containers:
      {{- if $object }}
      - name: publish-current
        {{- include "atelier.rcloneContainer" . | nindent 8 }}
        args:
          - copy
          - /mnt/store
          - {{ include "atelier.rcloneRoot" . }}
          - --exclude
          - versions/**
      {{- else }}
      - name: archive
        {{- include "atelier.archiveContainer" . | nindent 8 }}
      {{- end }}
    volumes:
      - name: config
        configMap:
          name: {{ include "atelier.componentName" (list . "training-config") }}
      - name: work
        emptyDir:
          sizeLimit: {{ $t.workSizeLimit }}
      - name: tmp
        emptyDir:
          sizeLimit: {{ $t.tmpSizeLimit }}
      {{- if $object }}
      - name: store
        emptyDir:
          sizeLimit: {{ $t.storeSizeLimit }}
      {{- else }}
      - name: store
        persistentVolumeClaim:
          claimName: {{ include "atelier.storeClaim" . }}
      {{- end }}
      {{- if $t.imageFolder.enabled }}
      - name: data
        persistentVolumeClaim:
          claimName: {{ $t.imageFolder.claimName }}
          readOnly: true
      {{- end }}
      {{- with $t.extraVolumes }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    {{- with $t.nodeSelector }}
    nodeSelector:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with $t.tolerations }}
    tolerations:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with $t.affinity }}
    affinity:
      {{- toYaml . | nindent 6 }}
    {{- end }}
{{- end -}}

{{/* Environment, mounts and security shared by the train and archive containers. */}}
{{- define "atelier.trainingContainerCommon" -}}
env:
  - name: HOME
    value: /tmp
  - name: TMPDIR
    value: /tmp
  - name: MPLCONFIGDIR
    value: /tmp/matplotlib
  - name: PYTHONDONTWRITEBYTECODE
    value: "1"
  {{- include "atelier.trackingEnv" . | nindent 2 }}
  {{- with .Values.training.extraEnv }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
securityContext:
  {{- include "atelier.containerSecurityContext" .Values.training.securityContext | nindent 2 }}
volumeMounts:
  - name: config
    mountPath: /etc/atelier
    readOnly: true
  - name: work
    mountPath: /work
  - name: tmp
    mountPath: /tmp
  - name: store
    mountPath: /mnt/store
  {{- if .Values.training.imageFolder.enabled }}
  - name: data
    mountPath: /data
    readOnly: true
  {{- end }}
  {{- with .Values.training.extraVolumeMounts }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end -}}

{{/* `atelier archive`: the gated run becomes the next version in /mnt/store, and current. */}}
{{- define "atelier.archiveContainer" -}}
image: {{ include "atelier.image" (list . .Values.training.image) }}
imagePullPolicy: {{ .Values.training.image.pullPolicy }}
command: [atelier]
args:
  - archive
  - /work/run
  - --store
  - /mnt/store
  - --name
  - {{ .Values.model.name }}
  {{- range $key, $value := .Values.training.archiveServing }}
  - --serving
  - {{ printf "%s=%v" $key $value | quote }}
  {{- end }}
{{ include "atelier.trainingContainerCommon" . }}
resources:
  {{- include "atelier.resources" .Values.training.archive.resources | nindent 2 }}
{{- end -}}

{{/* An rclone container on the "store" remote (object store mode). */}}
{{- define "atelier.rcloneContainer" -}}
image: {{ include "atelier.image" (list . .Values.modelStore.objectStore.image) }}
imagePullPolicy: {{ .Values.modelStore.objectStore.image.pullPolicy }}
env:
  {{- include "atelier.rcloneEnv" . | nindent 2 }}
{{- include "atelier.rcloneEnvFrom" . }}
securityContext:
  {{- include "atelier.containerSecurityContext" .Values.training.securityContext | nindent 2 }}
resources:
  {{- include "atelier.resources" .Values.modelStore.objectStore.resources | nindent 2 }}
volumeMounts:
  - name: store
    mountPath: /mnt/store
  - name: tmp
    mountPath: /tmp
{{- end -}}

{{/*
The Job's name carries a hash of everything that shapes the pod, so a changed config or image
makes a new Job (a Job's pod template is immutable) and an unchanged one is left alone.
*/}}
{{- define "atelier.trainingJobName" -}}
{{- $tracking := ternary (include "atelier.trackingUri" .) "off" .Values.tracking.enabled -}}
{{- $hash := dict "t" .Values.training "s" .Values.modelStore "m" .Values.model "v" .Chart.AppVersion "k" $tracking | toJson | sha256sum | trunc 8 -}}
{{- include "atelier.componentName" (list . (printf "train-%s" $hash)) -}}
{{- end -}}
