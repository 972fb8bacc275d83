{{- define "tollgate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tollgate.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "tollgate.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .service }}
{{- end -}}

{{/* A service's image: services.<name>.image overrides image.*; a digest pins it. */}}
{{- define "tollgate.image" -}}
{{- $own := (index .root.Values.services .service).image -}}
{{- $repository := $own.repository | default (printf "%s/tollgate-%s" .root.Values.image.repository .service) -}}
{{- $tag := $own.tag | default .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- if $own.digest -}}
{{- printf "%s@%s" $repository $own.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository $tag -}}
{{- end -}}
{{- end -}}

{{/* Topic names on the broker start with this (kafka.topics.prefix, then the release). */}}
{{- define "tollgate.topicPrefix" -}}
{{- .Values.kafka.topics.prefix -}}
{{- if .Values.kafka.topics.prefixWithRelease -}}{{ .Release.Name }}.{{- end -}}
{{- end -}}

{{/* A service's ServiceAccount. Expects dict root, service. */}}
{{- define "tollgate.serviceAccountName" -}}
{{- $sa := (index .root.Values.services .service).serviceAccount -}}
{{- if $sa.create -}}
{{- $sa.name | default (printf "%s-%s" (include "tollgate.fullname" .root) .service) -}}
{{- else -}}
{{- $sa.name | default "default" -}}
{{- end -}}
{{- end -}}

{{- define "tollgate.databaseSecret" -}}
{{- .Values.database.existingSecret | default (printf "%s-database" (include "tollgate.fullname" .)) -}}
{{- end -}}

{{/* Environment shared by every service. */}}
{{- define "tollgate.commonEnv" -}}
- name: TOLLGATE_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: TOLLGATE_LOG_FORMAT
  value: json
- name: KAFKA_BOOTSTRAP_SERVERS
  value: {{ .Values.kafka.bootstrapServers | quote }}
- name: KAFKA_FETCH_MAX_WAIT_MS
  value: {{ .Values.kafka.fetchMaxWaitMs | quote }}
- name: KAFKA_SECURITY_PROTOCOL
  value: {{ .Values.kafka.securityProtocol | quote }}
{{- with include "tollgate.topicPrefix" . }}
- name: KAFKA_TOPIC_PREFIX
  value: {{ . | quote }}
{{- end }}
{{- if eq .Values.kafka.sasl.mechanism "AWS_MSK_IAM" }}
- name: KAFKA_SASL_MECHANISM
  value: AWS_MSK_IAM
- name: KAFKA_AWS_REGION
  value: {{ required "kafka.sasl.awsRegion is required with AWS_MSK_IAM" .Values.kafka.sasl.awsRegion | quote }}
{{- else if .Values.kafka.sasl.mechanism }}
- name: KAFKA_SASL_MECHANISM
  value: {{ .Values.kafka.sasl.mechanism | quote }}
- name: KAFKA_SASL_USERNAME
  value: {{ .Values.kafka.sasl.username | quote }}
- name: KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ required "kafka.sasl.existingSecret is required with SASL" .Values.kafka.sasl.existingSecret }}
      key: {{ .Values.kafka.sasl.passwordKey }}
{{- end }}
{{- with .Values.kafka.tls.existingSecret }}
- name: KAFKA_SSL_CAFILE
  value: /etc/tollgate/kafka-tls/{{ $.Values.kafka.tls.caKey }}
{{- if $.Values.kafka.tls.certKey }}
- name: KAFKA_SSL_CERTFILE
  value: /etc/tollgate/kafka-tls/{{ $.Values.kafka.tls.certKey }}
- name: KAFKA_SSL_KEYFILE
  value: /etc/tollgate/kafka-tls/{{ required "kafka.tls.keyKey is required with certKey" $.Values.kafka.tls.keyKey }}
{{- end }}
{{- end }}
{{- if .Values.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .Values.otel.endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ .Values.otel.protocol | quote }}
{{- end }}
- name: OTEL_SERVICE_NAMESPACE
  value: {{ .Release.Namespace | quote }}
{{- end -}}

{{/* A service's container: image, ports, probes, env. Expects dict root, service, spec. */}}
{{- define "tollgate.container" -}}
{{- $root := .root -}}
{{- $name := .service -}}
{{- $spec := .spec -}}
{{- $prefix := printf "TOLLGATE_%s_" (upper $name) -}}
name: {{ $name }}
image: {{ include "tollgate.image" . }}
{{- if eq $name "analytics" }}
workingDir: /var/lib/tollgate
{{- end }}
imagePullPolicy: {{ $root.Values.image.pullPolicy }}
ports:
  - name: http
    containerPort: {{ $spec.port }}
    protocol: TCP
{{- if ne $name "analytics" }}
  - name: metrics
    containerPort: {{ $root.Values.metrics.port }}
    protocol: TCP
{{- end }}
env:
{{- include "tollgate.commonEnv" $root | nindent 2 }}
  - name: {{ $prefix }}HOST
    value: "0.0.0.0"
  - name: {{ $prefix }}PORT
    value: {{ $spec.port | quote }}
{{- if ne $name "analytics" }}
  - name: TOLLGATE_METRICS_HOST
    value: "0.0.0.0"
  - name: TOLLGATE_METRICS_PORT
    value: {{ $root.Values.metrics.port | quote }}
{{- end }}
{{- if has $name (list "auth" "meter" "router") }}
  - name: DATABASE_URL
    valueFrom:
      secretKeyRef:
        name: {{ include "tollgate.databaseSecret" $root }}
        key: {{ $root.Values.database.secretKey }}
{{- end }}
{{- if eq $name "auth" }}
{{- with $root.Values.identity }}
{{- if .issuer }}
  - name: TOLLGATE_AUTH_ISSUER
    value: {{ .issuer | quote }}
{{- end }}
{{- if .jwksUrl }}
  - name: TOLLGATE_AUTH_JWKS_URL
    value: {{ .jwksUrl | quote }}
{{- end }}
{{- if .audiences }}
  - name: TOLLGATE_AUTH_AUDIENCES
    value: {{ .audiences | quote }}
{{- end }}
{{- if .adminTokenSecret }}
  - name: TOLLGATE_AUTH_ADMIN_TOKEN
    valueFrom:
      secretKeyRef:
        name: {{ .adminTokenSecret }}
        key: ADMIN_TOKEN
{{- end }}
{{- if .policy }}
  - name: TOLLGATE_AUTH_POLICY_FILE
    value: /etc/tollgate/policy/policy.toml
{{- end }}
{{- end }}
{{- end }}
{{- if eq $name "router" }}
{{- with $root.Values.router }}
{{- if .catalog }}
  - name: TOLLGATE_ROUTER_CATALOG_FILE
    value: /etc/tollgate/catalog/models.yaml
{{- end }}
{{- if .providerSecretsSecret }}
  - name: TOLLGATE_ROUTER_PROVIDER_SECRETS
    valueFrom:
      secretKeyRef:
        name: {{ .providerSecretsSecret }}
        key: PROVIDER_SECRETS
{{- end }}
{{- if .adminTokenSecret }}
  - name: TOLLGATE_ROUTER_ADMIN_TOKEN
    valueFrom:
      secretKeyRef:
        name: {{ .adminTokenSecret }}
        key: ADMIN_TOKEN
{{- end }}
{{- end }}
{{- end }}
{{- if eq $name "meter" }}
  - name: TOLLGATE_METER_AUTH_URL
    value: {{ printf "http://%s-auth:%v" (include "tollgate.fullname" $root) $root.Values.services.auth.port | quote }}
  - name: TOLLGATE_METER_ROUTER_URL
    value: {{ printf "http://%s-router:%v" (include "tollgate.fullname" $root) $root.Values.services.router.port | quote }}
{{- with $root.Values.meter.adminTokenSecret }}
  - name: TOLLGATE_METER_ADMIN_TOKEN
    valueFrom:
      secretKeyRef:
        name: {{ . }}
        key: ADMIN_TOKEN
{{- end }}
{{- end }}
{{- if has $name (list "meter" "router") }}
{{- with include "tollgate.topicPrefix" $root }}
  - name: {{ $prefix }}CONSUMER_GROUP
    value: {{ printf "%stollgate-%s" . $name | quote }}
{{- end }}
{{- end }}
{{- if eq $name "stream" }}
  - name: TOLLGATE_STREAM_ROUTER_URL
    value: {{ printf "http://%s-router:%v" (include "tollgate.fullname" $root) $root.Values.services.router.port | quote }}
  - name: TOLLGATE_STREAM_AUTH_URL
    value: {{ printf "http://%s-auth:%v" (include "tollgate.fullname" $root) $root.Values.services.auth.port | quote }}
  - name: TOLLGATE_STREAM_KEEPALIVE_INTERVAL_S
    value: {{ $spec.keepaliveIntervalSeconds | quote }}
  - name: TOLLGATE_STREAM_METER_URL
    value: {{ printf "http://%s-meter:%v" (include "tollgate.fullname" $root) $root.Values.services.meter.port | quote }}
{{- with $root.Values.meter.adminTokenSecret }}
  - name: TOLLGATE_STREAM_METER_ADMIN_TOKEN
    valueFrom:
      secretKeyRef:
        name: {{ . }}
        key: ADMIN_TOKEN
{{- end }}
{{- end }}
{{- if eq $name "analytics" }}
  - name: TOLLGATE_ANALYTICS_DATA_DIR
    value: /var/lib/tollgate/analytics
  - name: TOLLGATE_ANALYTICS_STATE_DIR
    value: /var/lib/tollgate/analytics-state
{{- with include "tollgate.topicPrefix" $root }}
  - name: TOLLGATE_ANALYTICS_APP_ID
    value: {{ printf "%stollgate-analytics" . | quote }}
  - name: TOLLGATE_ANALYTICS_LOGS_TOPIC
    value: {{ printf "%stollgate.logs" . | quote }}
  - name: TOLLGATE_ANALYTICS_USAGE_TOPIC
    value: {{ printf "%stollgate.usage" . | quote }}
  - name: TOLLGATE_ANALYTICS_DEAD_LETTER_TOPIC
    value: {{ printf "%stollgate.deadletter" . | quote }}
{{- end }}
{{- with $root.Values.analytics }}
{{- if .s3Bucket }}
  - name: TOLLGATE_ANALYTICS_S3_BUCKET
    value: {{ .s3Bucket | quote }}
  - name: TOLLGATE_ANALYTICS_S3_PREFIX
    value: {{ .s3Prefix | quote }}
  - name: TOLLGATE_ANALYTICS_S3_REGION
    value: {{ .s3Region | quote }}
{{- end }}
{{- if .adminTokenSecret }}
  - name: TOLLGATE_ANALYTICS_ADMIN_TOKEN
    valueFrom:
      secretKeyRef:
        name: {{ .adminTokenSecret }}
        key: ADMIN_TOKEN
{{- end }}
{{- end }}
{{- end }}
{{- range $key, $value := $spec.env }}
  - name: {{ $key }}
    value: {{ $value | quote }}
{{- end }}
{{- with $spec.extraEnv }}
  {{- toYaml . | nindent 2 }}
{{- end }}
livenessProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: 10
  failureThreshold: 6
readinessProbe:
  httpGet: {path: /readyz, port: http}
  periodSeconds: 5
  failureThreshold: 3
startupProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: 2
  failureThreshold: 60
resources:
  {{- toYaml $spec.resources | nindent 2 }}
securityContext:
  {{- toYaml $root.Values.securityContext | nindent 2 }}
volumeMounts:
  - name: tmp
    mountPath: /tmp
{{- if $root.Values.kafka.tls.existingSecret }}
  - name: kafka-tls
    mountPath: /etc/tollgate/kafka-tls
    readOnly: true
{{- end }}
{{- if eq $name "analytics" }}
  - name: data
    mountPath: /var/lib/tollgate
{{- end }}
{{- if and (eq $name "router") $root.Values.router.catalog }}
  - name: catalog
    mountPath: /etc/tollgate/catalog
    readOnly: true
{{- end }}
{{- if and (eq $name "auth") $root.Values.identity.policy }}
  - name: policy
    mountPath: /etc/tollgate/policy
    readOnly: true
{{- end }}
{{- with $spec.extraVolumeMounts }}
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "tollgate.podSpec" -}}
{{- $root := .root -}}
{{- $spec := .spec -}}
serviceAccountName: {{ include "tollgate.serviceAccountName" . }}
automountServiceAccountToken: false
{{- with $spec.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with $spec.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $spec.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $spec.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $spec.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
terminationGracePeriodSeconds: {{ .spec.terminationGracePeriodSeconds }}
containers:
  - {{ include "tollgate.container" . | indent 4 | trim }}
volumes:
  - name: tmp
    emptyDir: {}
{{- with .root.Values.kafka.tls.existingSecret }}
  - name: kafka-tls
    secret:
      secretName: {{ . }}
{{- end }}
{{- if eq .service "analytics" }}
  - name: data
    emptyDir: {}
{{- end }}
{{- if and (eq .service "router") .root.Values.router.catalog }}
  - name: catalog
    configMap:
      name: {{ include "tollgate.fullname" .root }}-catalog
{{- end }}
{{- if and (eq .service "auth") .root.Values.identity.policy }}
  - name: policy
    configMap:
      name: {{ include "tollgate.fullname" .root }}-policy
{{- end }}
{{- with $spec.extraVolumes }}
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* A service's pod template metadata. Expects dict root, service, spec. */}}
{{- define "tollgate.podMetadata" -}}
labels:
  {{- include "tollgate.labels" .root | nindent 2 }}
  app.kubernetes.io/component: {{ .service }}
  {{- with .spec.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
annotations:
  prometheus.io/scrape: "true"
  prometheus.io/port: {{ (eq .service "analytics") | ternary .spec.port .root.Values.metrics.port | quote }}
  prometheus.io/path: /metrics
  {{- with .spec.podAnnotations }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end -}}
