{{/* Chart name, truncated to the 63 characters Kubernetes allows. */}}
{{- define "sparse-serve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name of every object of this chart. */}}
{{- define "sparse-serve.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "sparse-serve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sparse-serve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "sparse-serve.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "sparse-serve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "sparse-serve.image" -}}
{{ printf "%s:%s" .Values.image.repository (toString .Values.image.tag) }}
{{- end }}

{{- define "sparse-serve.apiKeySecretName" -}}
{{- if .Values.apiKey.create }}{{ include "sparse-serve.fullname" . }}-api-key{{ else }}{{ .Values.apiKey.existingSecret }}{{ end }}
{{- end }}

{{- define "sparse-serve.apiKeyEnabled" -}}
{{- if or .Values.apiKey.create .Values.apiKey.existingSecret }}true{{ end }}
{{- end }}

{{- define "sparse-serve.profileConfigMapName" -}}
{{- default (printf "%s-profile" (include "sparse-serve.fullname" .)) .Values.profile.existingConfigMap }}
{{- end }}

{{- define "sparse-serve.modelsClaimName" -}}
{{- default (printf "%s-models" (include "sparse-serve.fullname" .)) .Values.models.existingClaim }}
{{- end }}

{{/* GPUs one serving pod needs: every stage on one node, or one stage per node with Ray. */}}
{{- define "sparse-serve.gpusPerPod" -}}
{{- if .Values.ray.enabled }}{{ .Values.serve.tensorParallelSize }}{{ else }}{{ mul .Values.serve.tensorParallelSize .Values.serve.pipelineParallelSize }}{{ end }}
{{- end }}

{{/* Arguments of `sparse-serve serve` (the image's entrypoint), one list item per word. */}}
{{- define "sparse-serve.serveArgs" -}}
{{- $s := .Values.serve }}
- --port
- {{ .Values.service.port | quote }}
{{- with $s.model }}
- --model
- {{ . | quote }}
{{- end }}
{{- with $s.servedModelName }}
- --served-model-name
- {{ . | quote }}
{{- end }}
- --dtype
- {{ $s.dtype | quote }}
{{- with $s.maxModelLen }}
- --max-model-len
- {{ . | quote }}
{{- end }}
- --gpu-memory-utilization
- {{ $s.gpuMemoryUtilization | quote }}
{{- if $s.enforceEager }}
- --enforce-eager
{{- end }}
- --tensor-parallel-size
- {{ $s.tensorParallelSize | quote }}
- --pipeline-parallel-size
- {{ $s.pipelineParallelSize | quote }}
{{- $backend := ternary "ray" $s.distributedExecutorBackend .Values.ray.enabled }}
{{- with $backend }}
- --distributed-executor-backend
- {{ . | quote }}
{{- end }}
{{- if .Values.profile.enabled }}
- --profile
- {{ printf "/profiles/%s" .Values.profile.fileName | quote }}
{{- end }}
{{- if $s.noSparse }}
- --no-sparse
{{- end }}
{{- range $s.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{- define "sparse-serve.env" -}}
- name: SPARSE_SERVE_HOST
  value: "0.0.0.0"
- name: SPARSE_SERVE_CACHE_DIR
  value: /cache
- name: HF_HOME
  value: /cache/huggingface
{{- if include "sparse-serve.apiKeyEnabled" . }}
- name: SPARSE_SERVE_API_KEY_FILE
  value: /var/run/secrets/sparse-serve/{{ .Values.apiKey.secretKey }}
{{- end }}
{{- with .Values.serve.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "sparse-serve.volumeMounts" -}}
- name: cache
  mountPath: /cache
- name: shm
  mountPath: /dev/shm
{{- if ne .Values.models.source "none" }}
- name: models
  mountPath: {{ .Values.models.mountPath }}
  readOnly: true
{{- end }}
{{- if .Values.profile.enabled }}
- name: profile
  mountPath: /profiles
  readOnly: true
{{- end }}
{{- if include "sparse-serve.apiKeyEnabled" . }}
- name: api-key
  mountPath: /var/run/secrets/sparse-serve
  readOnly: true
{{- end }}
{{- end }}

{{- define "sparse-serve.volumes" -}}
- name: cache
  emptyDir:
    sizeLimit: {{ .Values.cache.sizeLimit }}
- name: shm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.shm.sizeLimit }}
{{- if eq .Values.models.source "pvc" }}
- name: models
  persistentVolumeClaim:
    claimName: {{ include "sparse-serve.modelsClaimName" . }}
    readOnly: true
{{- else if eq .Values.models.source "hostPath" }}
- name: models
  hostPath:
    path: {{ .Values.models.hostPath }}
    type: Directory
{{- end }}
{{- if .Values.profile.enabled }}
- name: profile
  configMap:
    name: {{ include "sparse-serve.profileConfigMapName" . }}
{{- end }}
{{- if include "sparse-serve.apiKeyEnabled" . }}
- name: api-key
  secret:
    secretName: {{ include "sparse-serve.apiKeySecretName" . }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{/* Resources of one serving pod: the configured CPU/memory plus its GPUs. */}}
{{- define "sparse-serve.resources" -}}
{{- $res := deepCopy (default dict .resources) }}
{{- if .root.Values.gpu.enabled }}
{{- $limits := default dict $res.limits }}
{{- $_ := set $limits .root.Values.gpu.resourceName (include "sparse-serve.gpusPerPod" .root | atoi) }}
{{- $_ := set $res "limits" $limits }}
{{- end }}
{{- toYaml $res }}
{{- end }}

{{/* Probes on GET /health of the named port. */}}
{{- define "sparse-serve.probes" -}}
{{- $p := .Values.probes }}
startupProbe:
  httpGet:
    path: /health
    port: http
  periodSeconds: {{ $p.startup.periodSeconds }}
  timeoutSeconds: {{ $p.startup.timeoutSeconds }}
  failureThreshold: {{ $p.startup.failureThreshold }}
readinessProbe:
  httpGet:
    path: /health
    port: http
  periodSeconds: {{ $p.readiness.periodSeconds }}
  timeoutSeconds: {{ $p.readiness.timeoutSeconds }}
  failureThreshold: {{ $p.readiness.failureThreshold }}
livenessProbe:
  httpGet:
    path: /health
    port: http
  periodSeconds: {{ $p.liveness.periodSeconds }}
  timeoutSeconds: {{ $p.liveness.timeoutSeconds }}
  failureThreshold: {{ $p.liveness.failureThreshold }}
{{- end }}

{{/* Refuse inconsistent values with a message that says what to change. */}}
{{- define "sparse-serve.validate" -}}
{{- $s := .Values.serve }}
{{- if and .Values.ray.enabled (lt (int $s.pipelineParallelSize) 2) }}
{{- fail "ray.enabled needs serve.pipelineParallelSize >= 2 (one pipeline stage per node); one node runs as a Deployment with ray.enabled=false" }}
{{- end }}
{{- if and .Values.ray.enabled (eq $s.distributedExecutorBackend "mp") }}
{{- fail "serve.distributedExecutorBackend=mp cannot span nodes: leave it empty or set ray with ray.enabled" }}
{{- end }}
{{- if and .Values.apiKey.create (not .Values.apiKey.value) }}
{{- fail "apiKey.create=true needs apiKey.value (or set apiKey.existingSecret instead)" }}
{{- end }}
{{- if and .Values.profile.enabled (not .Values.profile.existingConfigMap) (not .Values.profile.json) }}
{{- fail "profile.enabled needs profile.json (the profile's JSON text) or profile.existingConfigMap" }}
{{- end }}
{{- end }}
