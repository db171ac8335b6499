{{- define "shoal.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 50 | trimSuffix "-" }}{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "shoal.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "shoal.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "shoal.image" -}}
{{ printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) | quote }}
{{- end -}}

{{/* Fails the render with one clear line when values contradict each other (the schema sees one key at a time). */}}
{{- define "shoal.validate" -}}
{{- $partitions := int .Values.topics.flows.partitions -}}
{{- if and .Values.detect.enabled (gt (int .Values.detect.replicas) $partitions) -}}
{{- fail (printf "detect.replicas (%d) exceeds topics.flows.partitions (%d): extra workers would sit idle" (int .Values.detect.replicas) $partitions) -}}
{{- end -}}
{{- if and .Values.detect.autoscaling.enabled (gt (int .Values.detect.autoscaling.maxReplicas) $partitions) -}}
{{- fail (printf "detect.autoscaling.maxReplicas (%d) exceeds topics.flows.partitions (%d)" (int .Values.detect.autoscaling.maxReplicas) $partitions) -}}
{{- end -}}
{{- if and .Values.confirm.enabled (gt (int .Values.confirm.replicas) (int .Values.topics.partials.partitions)) -}}
{{- fail (printf "confirm.replicas (%d) exceeds topics.partials.partitions (%d): extra instances would sit idle" (int .Values.confirm.replicas) (int .Values.topics.partials.partitions)) -}}
{{- end -}}
{{- if and .Values.share.enabled (not .Values.share.policyToml) -}}
{{- fail "share.enabled needs share.policyToml (the sharing policy, docs/sharing.md)" -}}
{{- end -}}
{{- if .Values.kafka.sasl.enabled -}}
{{- range $role := list "collector" "detect" "confirm" "share" "intelSync" "topics" -}}
{{- $user := index $.Values.kafka.sasl.users $role | default dict -}}
{{- $secret := $user.passwordSecret | default $.Values.kafka.sasl.passwordSecret -}}
{{- if not ($user.username | default $.Values.kafka.sasl.username) -}}
{{- fail (printf "kafka.sasl.enabled needs kafka.sasl.users.%s.username or kafka.sasl.username" $role) -}}
{{- end -}}
{{- if not $secret.name -}}
{{- fail (printf "kafka.sasl.enabled needs kafka.sasl.users.%s.passwordSecret.name or kafka.sasl.passwordSecret.name (an existing Secret)" $role) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and .Values.kafka.tls.enabled (not .Values.kafka.tls.caSecret.name) -}}
{{- fail "kafka.tls.enabled needs kafka.tls.caSecret.name (an existing Secret)" -}}
{{- end -}}
{{- end -}}

{{/* librdkafka settings: plain ones from values, secrets only through secretKeyRef or mounted files.
     Each role (collector, detect, confirm, share, intelSync, topics) may have a SASL user of its own (kafka.sasl.users),
     so the cluster's ACLs can give it only its topics; otherwise kafka.sasl.username is used. */}}
{{- define "shoal.kafkaEnv" -}}
{{- $role := .role -}}
{{- with .root -}}
{{- $user := index .Values.kafka.sasl.users $role | default dict -}}
{{- $username := $user.username | default .Values.kafka.sasl.username -}}
{{- $secret := $user.passwordSecret | default .Values.kafka.sasl.passwordSecret -}}
{{- range $key, $value := .Values.kafka.settings }}
- name: {{ printf "SHOAL_KAFKA_%s" ($key | replace "." "_" | upper) }}
  value: {{ $value | quote }}
{{- end }}
{{- if or .Values.kafka.sasl.enabled .Values.kafka.tls.enabled }}
- name: SHOAL_KAFKA_SECURITY_PROTOCOL
  value: {{ if .Values.kafka.sasl.enabled }}{{ if .Values.kafka.tls.enabled }}SASL_SSL{{ else }}SASL_PLAINTEXT{{ end }}{{ else }}SSL{{ end }}
{{- end }}
{{- if .Values.kafka.sasl.enabled }}
- name: SHOAL_KAFKA_SASL_MECHANISM
  value: {{ .Values.kafka.sasl.mechanism | quote }}
- name: SHOAL_KAFKA_SASL_USERNAME
  value: {{ $username | quote }}
- name: SHOAL_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $secret.name }}
      key: {{ $secret.key }}
{{- end }}
{{- if .Values.kafka.tls.enabled }}
- name: SHOAL_KAFKA_SSL_CA_LOCATION
  value: /etc/shoal/kafka-ca/{{ .Values.kafka.tls.caSecret.key }}
{{- end }}
{{- end -}}
{{- end -}}

{{- define "shoal.kafkaVolumes" -}}
{{- if .Values.kafka.tls.enabled }}
- name: kafka-ca
  secret:
    secretName: {{ .Values.kafka.tls.caSecret.name }}
    items: [{key: {{ .Values.kafka.tls.caSecret.key | quote }}, path: {{ .Values.kafka.tls.caSecret.key | quote }}}]
{{- end }}
{{- end -}}

{{- define "shoal.kafkaMounts" -}}
{{- if .Values.kafka.tls.enabled }}
- {name: kafka-ca, mountPath: /etc/shoal/kafka-ca, readOnly: true}
{{- end }}
{{- end -}}

{{- define "shoal.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "shoal.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "shoal.probes" -}}
livenessProbe:
  httpGet: {path: /healthz, port: metrics}
  periodSeconds: 10
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /readyz, port: metrics}
  periodSeconds: 10
  timeoutSeconds: 5
startupProbe:
  httpGet: {path: /healthz, port: metrics}
  periodSeconds: 5
  failureThreshold: 60
{{- end -}}

{{/* Writable scratch on a read-only root: /tmp, and numba's cache copied from the image's build-time one. */}}
{{- define "shoal.scratchVolumes" -}}
- name: tmp
  emptyDir: {sizeLimit: 256Mi}
- name: numba-cache
  emptyDir: {sizeLimit: 256Mi}
{{- end -}}

{{- define "shoal.scratchMounts" -}}
- {name: tmp, mountPath: /tmp}
- {name: numba-cache, mountPath: /var/cache/shoal/numba}
{{- end -}}

{{- define "shoal.numbaInit" -}}
- name: numba-cache
  image: {{ include "shoal.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command: ["cp", "-a", "/opt/shoal/numba-cache/.", "/var/cache/shoal/numba/"]
  securityContext:
    {{- include "shoal.containerSecurityContext" . | nindent 4 }}
  resources:
    requests: {cpu: 50m, memory: 32Mi}
    limits: {memory: 64Mi}
  volumeMounts:
    - {name: numba-cache, mountPath: /var/cache/shoal/numba}
{{- end -}}
