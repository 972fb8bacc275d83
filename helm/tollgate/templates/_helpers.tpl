{{- define "tollgate.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
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

{{- define "tollgate.image" -}}
{{- printf "%s/tollgate-%s:%s" .root.Values.image.repository .service (.root.Values.image.tag | default .root.Chart.AppVersion) -}}
{{- end -}}

{{- define "tollgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "tollgate.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
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
env:
{{- include "tollgate.commonEnv" $root | nindent 2 }}
  - name: {{ $prefix }}HOST
    value: "0.0.0.0"
  - name: {{ $prefix }}PORT
    value: {{ $spec.port | quote }}
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
{{- with $root.Values.meter.adminTokenSecret }}
  - name: TOLLGATE_METER_ADMIN_TOKEN
    valueFrom:
      secretKeyRef:
        name: {{ . }}
        key: ADMIN_TOKEN
{{- end }}
{{- end }}
{{- if eq $name "stream" }}
  - name: TOLLGATE_STREAM_ROUTER_URL
    value: {{ printf "http://%s-router:%v" (include "tollgate.fullname" $root) $root.Values.services.router.port | quote }}
  - name: TOLLGATE_STREAM_AUTH_URL
    value: {{ printf "http://%s-auth:%v" (include "tollgate.fullname" $root) $root.Values.services.auth.port | quote }}
  - name: TOLLGATE_STREAM_REPLY_PARTITIONS
    value: replica
  - name: TOLLGATE_STREAM_REPLICA_INDEX
    valueFrom:
      fieldRef:
        fieldPath: metadata.labels['apps.kubernetes.io/pod-index']
  - name: TOLLGATE_STREAM_REPLICA_COUNT
    value: {{ $spec.replicas | quote }}
{{- end }}
{{- if eq $name "analytics" }}
  - name: TOLLGATE_ANALYTICS_DATA_DIR
    value: /var/lib/tollgate/analytics
  - name: TOLLGATE_ANALYTICS_STATE_DIR
    value: /var/lib/tollgate/analytics-state
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
{{- end -}}

{{- define "tollgate.podSpec" -}}
{{- $root := .root -}}
serviceAccountName: {{ include "tollgate.serviceAccountName" $root }}
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
{{- end -}}
