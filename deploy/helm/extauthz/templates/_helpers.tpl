{{/*
Helpers. Each takes this chart's context: an app's chart that has this one as a
dependency passes it as .Subcharts.extauthz (see _sidecar.tpl).
*/}}

{{- define "extauthz.name" -}}
{{- default "extauthz" .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The prefix of every object name. */}}
{{- define "extauthz.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "extauthz.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels of every object the chart renders. */}}
{{- define "extauthz.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: extauthz
app.kubernetes.io/version: {{ include "extauthz.imageTag" . | trunc 63 | quote }}
{{- end -}}

{{/* What selects the extauthz Pods. */}}
{{- define "extauthz.selectorLabels" -}}
app.kubernetes.io/name: {{ include "extauthz.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* What selects the chart's Redis Pod. */}}
{{- define "extauthz.redis.selectorLabels" -}}
app.kubernetes.io/name: redis
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
The labels of a Pod that runs extauthz: the selector labels, and on the Redis
store extauthz/redis-client, which the Redis NetworkPolicy admits.
*/}}
{{- define "extauthz.podLabels" -}}
{{ include "extauthz.selectorLabels" . }}
app.kubernetes.io/component: authz
{{- if include "extauthz.chartRedis" . }}
extauthz/redis-client: "true"
{{- end }}
{{- end -}}

{{- define "extauthz.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "extauthz.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "extauthz.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag -}}
{{- end -}}

{{/* The extauthz image, by digest when one is given. */}}
{{- define "extauthz.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else if .Values.image.tag -}}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository .Chart.AppVersion -}}
{{- end -}}
{{- end -}}

{{/* "true" when the chart runs its own Redis. */}}
{{- define "extauthz.chartRedis" -}}
{{- if and (eq .Values.store.backend "redis") .Values.redis.enabled -}}true{{- end -}}
{{- end -}}

{{- define "extauthz.redis.fullname" -}}
{{- printf "%s-redis" (include "extauthz.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The Secret and key holding the Redis password. */}}
{{- define "extauthz.redis.secretName" -}}
{{- default (include "extauthz.redis.fullname" .) .Values.store.redis.password.existingSecret -}}
{{- end -}}

{{/* The Secret and key holding the pepper. */}}
{{- define "extauthz.pepper.secretName" -}}
{{- default (printf "%s-pepper" (include "extauthz.fullname" .)) .Values.pepper.existingSecret -}}
{{- end -}}

{{/* Where the files live in the container. */}}
{{- define "extauthz.configFile" -}}/etc/extauthz/config.yaml{{- end -}}
{{- define "extauthz.tlsDir" -}}/etc/extauthz-tls{{- end -}}
{{- define "extauthz.clientCADir" -}}/etc/extauthz-client-ca{{- end -}}
{{- define "extauthz.embeddedDir" -}}/var/lib/extauthz{{- end -}}

{{/*
GOMEMLIMIT: goMemLimit, or 90% of the memory limit (given in Mi or Gi), in MiB.
*/}}
{{- define "extauthz.goMemLimit" -}}
{{- if .Values.goMemLimit -}}
{{- .Values.goMemLimit -}}
{{- else -}}
{{- $limit := toString .Values.resources.limits.memory -}}
{{- if regexMatch "^[1-9][0-9]*Mi$" $limit -}}
{{- div (mul (trimSuffix "Mi" $limit | atoi) 9) 10 }}MiB
{{- else if regexMatch "^[1-9][0-9]*Gi$" $limit -}}
{{- div (mul (trimSuffix "Gi" $limit | atoi) 1024 9) 10 }}MiB
{{- else -}}
{{- fail (printf "resources.limits.memory %q: give it in Mi or Gi (e.g. 512Mi), or set goMemLimit yourself" $limit) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* GOMEMLIMIT in bytes (goMemLimit's units: none, B, KiB, MiB, GiB, TiB). */}}
{{- define "extauthz.goMemLimitBytes" -}}
{{- $s := include "extauthz.goMemLimit" . -}}
{{- $n := regexFind "^[0-9]+" $s -}}
{{- $mult := get (dict "" 1 "B" 1 "KiB" 1024 "MiB" 1048576 "GiB" 1073741824 "TiB" 1099511627776) (trimPrefix $n $s) -}}
{{- mul ($n | int64) $mult -}}
{{- end -}}

{{/*
The seconds of a Go duration string (time.ParseDuration's units: "5m",
"1h30m", "1.5h", "500ms"); "" for anything else, which extauthz itself
refuses when it starts.
*/}}
{{- define "extauthz.durationSeconds" -}}
{{- $d := toString . -}}
{{- $part := "([0-9]+[.]?[0-9]*|[.][0-9]+)(h|ms|us|µs|ns|m|s)" -}}
{{- if regexMatch (printf "^(%s)+$" $part) $d -}}
{{- $unit := dict "h" 3600.0 "m" 60.0 "s" 1.0 "ms" 0.001 "us" 0.000001 "µs" 0.000001 "ns" 0.000000001 -}}
{{- $sum := 0.0 -}}
{{- range regexFindAll $part $d -1 -}}
{{- $n := regexFind "^[0-9.]+" . -}}
{{- $sum = addf $sum (mulf (float64 $n) (get $unit (trimPrefix $n .))) -}}
{{- end -}}
{{- $sum -}}
{{- end -}}
{{- end -}}

{{/*
The extauthz config file: .Values.config with what the chart owns put in.
Settings the chart owns are refused in .Values.config, naming the value that
sets them: two places for one setting is one too many.
*/}}
{{- define "extauthz.config" -}}
{{- $cfg := deepCopy (.Values.config | default dict) -}}
{{- $owned := dict
  "listen" "listen"
  "hashing.pepper_env" "pepper"
  "tls" "tls"
  "store.backend" "store.backend"
  "store.path" "store.backend (embedded)"
  "store.redis.url" "store.redis.url"
  "store.redis.username" "store.redis.username"
  "store.redis.password_env" "store.redis.password"
  "store.redis.prefix" "store.redis.prefix" -}}
{{- range $path, $value := $owned -}}
{{- $node := $cfg -}}
{{- $found := true -}}
{{- range splitList "." $path -}}
{{- if and $found (kindIs "map" $node) (hasKey $node .) -}}
{{- $node = index $node . -}}
{{- else -}}
{{- $found = false -}}
{{- end -}}
{{- end -}}
{{- if $found -}}
{{- fail (printf "config.%s is set by the chart: use the value %s instead" $path $value) -}}
{{- end -}}
{{- end -}}
{{- $listen := dict "http" (printf ":%d" (int .Values.listen.http)) "max_connections_per_client" (int .Values.listen.maxConnectionsPerClient) -}}
{{- if .Values.sidecar.enabled -}}
{{- $_ := set $listen "grpc" (printf "127.0.0.1:%d" (int .Values.listen.grpc)) -}}
{{- $_ := set $listen "admin" "off" -}}
{{- $_ := set $listen "debug" "off" -}}
{{- else -}}
{{- $_ := set $listen "grpc" (printf ":%d" (int .Values.listen.grpc)) -}}
{{- $_ := set $listen "admin" .Values.listen.admin -}}
{{- $_ := set $listen "debug" .Values.listen.debug -}}
{{- end -}}
{{- $_ := set $cfg "listen" $listen -}}
{{- $store := deepCopy (get $cfg "store" | default dict) -}}
{{- $_ := set $store "backend" .Values.store.backend -}}
{{- if eq .Values.store.backend "embedded" -}}
{{- $_ := set $store "path" (printf "%s/extauthz.db" (include "extauthz.embeddedDir" .)) -}}
{{- else -}}
{{- $redis := deepCopy (get $store "redis" | default dict) -}}
{{- if include "extauthz.chartRedis" . -}}
{{- $_ := set $redis "url" (printf "redis://%s:6379/0" (include "extauthz.redis.fullname" .)) -}}
{{- else if .Values.store.redis.url -}}
{{- $_ := set $redis "url" .Values.store.redis.url -}}
{{- end -}}
{{- $_ := set $redis "username" .Values.store.redis.username -}}
{{- $_ := set $redis "password_env" "REDIS_PASSWORD" -}}
{{- $_ := set $redis "prefix" .Values.store.redis.prefix -}}
{{- $_ := set $store "redis" $redis -}}
{{- end -}}
{{- $_ := set $cfg "store" $store -}}
{{- $hashing := deepCopy (get $cfg "hashing" | default dict) -}}
{{- $_ := set $hashing "pepper_env" "EXTAUTHZ_PEPPER" -}}
{{- $_ := set $cfg "hashing" $hashing -}}
{{- if .Values.tls.enabled -}}
{{- $tls := dict "cert_file" (printf "%s/tls.crt" (include "extauthz.tlsDir" .)) "key_file" (printf "%s/tls.key" (include "extauthz.tlsDir" .)) -}}
{{- if .Values.tls.clientCA.enabled -}}
{{- $_ := set $tls "client_ca_file" (printf "%s/%s" (include "extauthz.clientCADir" .) .Values.tls.clientCA.key) -}}
{{- end -}}
{{- $_ := set $cfg "tls" $tls -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/*
Refuses combinations of values that cannot work or that say two things at
once, before anything is rendered. values.schema.json has already checked
each value on its own.
*/}}
{{- define "extauthz.validate" -}}
{{- $v := .Values -}}
{{- /*
Names: the chart's Redis is selected by app.kubernetes.io/name: redis, so an
extauthz named redis would be selected with it by every Service,
NetworkPolicy and budget of either (extauthz's policy opening Redis to the
proxies). And each name is <fullname> plus a suffix (-redis, -headless)
within the 63 characters of a Service name: past 54, the suffix is cut or
refused, and two objects get one name.
*/ -}}
{{- if eq (include "extauthz.name" .) "redis" -}}
{{- fail "nameOverride \"redis\": the extauthz Pods would carry the labels that select the chart's Redis (app.kubernetes.io/name: redis), and each Service and NetworkPolicy of one would select the other's Pods too; choose another name" -}}
{{- end -}}
{{- $fullname := include "extauthz.fullname" . -}}
{{- if gt (len $fullname) 54 -}}
{{- fail (printf "the object names start with %q (%d characters; the release name, fullnameOverride or nameOverride): keep it to 54, so that -headless and -redis still fit a Service name's 63 and no two objects share one" $fullname (len $fullname)) -}}
{{- end -}}
{{- if eq $v.store.backend "embedded" -}}
{{- if ne (int $v.replicaCount) 1 -}}
{{- fail (printf "replicaCount %d: the embedded store is one SQLite file on one volume, so it runs exactly 1 replica; use store.backend redis to run more" (int $v.replicaCount)) -}}
{{- end -}}
{{- if $v.autoscaling.enabled -}}
{{- fail "autoscaling.enabled: the embedded store runs exactly 1 replica and cannot scale; use store.backend redis" -}}
{{- end -}}
{{- if $v.sidecar.enabled -}}
{{- fail "sidecar.enabled with store.backend embedded: every app Pod would keep keys of its own; sidecars share keys in Redis" -}}
{{- end -}}
{{- if dig "store" "redis" nil ($v.config | default dict) -}}
{{- fail "config.store.redis is set, but store.backend is embedded, which does not use Redis (extauthz refuses such a config): set store.backend redis, or remove config.store.redis" -}}
{{- end -}}
{{- else -}}
{{- if and $v.redis.enabled $v.store.redis.url -}}
{{- fail "store.redis.url names your own Redis while redis.enabled also runs the chart's: set redis.enabled false, or store.redis.url \"\"" -}}
{{- end -}}
{{- if not $v.redis.enabled -}}
{{- $addrs := dig "store" "redis" "addrs" list ($v.config | default dict) -}}
{{- if and (not $v.store.redis.url) (not $addrs) -}}
{{- fail "redis.enabled is false: give your Redis as store.redis.url, or its Cluster nodes or Sentinels as config.store.redis.addrs" -}}
{{- end -}}
{{- if and $v.networkPolicy.enabled (not $v.networkPolicy.extraEgress) (not $v.sidecar.enabled) -}}
{{- fail "networkPolicy.enabled with your own Redis: add an egress rule that reaches it to networkPolicy.extraEgress (the chart cannot know where it is), or set networkPolicy.enabled false" -}}
{{- end -}}
{{- else -}}
{{- if ne $v.store.redis.username "extauthz" -}}
{{- fail (printf "store.redis.username %q: the chart's Redis lets in the ACL user extauthz only" $v.store.redis.username) -}}
{{- end -}}
{{- if not (hasPrefix "extauthz:" $v.store.redis.prefix) -}}
{{- fail (printf "store.redis.prefix %q: the chart's Redis ACL grants extauthz:* keys only; keep the prefix under extauthz:" $v.store.redis.prefix) -}}
{{- end -}}
{{- end -}}
{{- if and $v.store.redis.password.existingSecret $v.store.redis.password.value -}}
{{- fail "store.redis.password: set existingSecret or value, not both" -}}
{{- end -}}
{{- end -}}
{{- if and $v.pepper.existingSecret $v.pepper.value -}}
{{- fail "pepper: set existingSecret or value, not both" -}}
{{- end -}}
{{- if $v.tls.enabled -}}
{{- if not $v.tls.existingSecret -}}
{{- fail "tls.enabled: name the kubernetes.io/tls Secret in tls.existingSecret" -}}
{{- end -}}
{{- else if or $v.tls.existingSecret $v.tls.clientCA.enabled -}}
{{- fail "tls.existingSecret or tls.clientCA.enabled is set but tls.enabled is false: turn TLS on, or clear them" -}}
{{- end -}}
{{- /*
A NodePort or LoadBalancer Service takes connections from off the cluster,
which the NetworkPolicy (it admits Pods) cannot sort: anyone the load
balancer lets in could ask for decisions naming any client address and
policy, spend the unknown-key budget every new key waits on, and read
/metrics. Only a client certificate the CA signed keeps them out there.
*/ -}}
{{- if and (ne $v.service.type "ClusterIP") (not $v.sidecar.enabled) (not (and $v.tls.enabled $v.tls.clientCA.enabled)) -}}
{{- fail (printf "service.type %s publishes the decision ports and /metrics off the cluster, where the NetworkPolicy cannot tell a proxy from anyone else: turn on tls.enabled with tls.clientCA.enabled (only clients holding a certificate your CA signed are answered), or keep service.type ClusterIP" $v.service.type) -}}
{{- end -}}
{{- if and $v.tls.clientCA.existingSecret (not $v.tls.clientCA.enabled) -}}
{{- fail "tls.clientCA.existingSecret is set but tls.clientCA.enabled is false" -}}
{{- end -}}
{{- if or (eq (int $v.listen.grpc) (int $v.listen.http)) (hasSuffix (printf ":%d" (int $v.listen.grpc)) (toString $v.listen.admin)) (hasSuffix (printf ":%d" (int $v.listen.http)) (toString $v.listen.admin)) -}}
{{- fail "listen: grpc, http and admin need three different ports" -}}
{{- end -}}
{{- $debugPort := regexReplaceAll "^.*:" (toString $v.listen.debug) "" -}}
{{- if and (ne (toString $v.listen.debug) "off") (has $debugPort (list (toString (int $v.listen.grpc)) (toString (int $v.listen.http)) (regexReplaceAll "^.*:" (toString $v.listen.admin) ""))) -}}
{{- fail "listen: debug needs a port of its own, not grpc's, http's or admin's" -}}
{{- end -}}
{{- if $v.sidecar.enabled -}}
{{- range $name, $on := dict "autoscaling.enabled" $v.autoscaling.enabled "istio.enabled" $v.istio.enabled "metrics.serviceMonitor.enabled" $v.metrics.serviceMonitor.enabled -}}
{{- if $on -}}
{{- fail (printf "%s with sidecar.enabled: there is no extauthz Deployment or Service of the chart's own (the sidecars live in your app's Pods)" $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and $v.istio.enabled (not $v.istio.namespace) -}}
{{- fail "istio.enabled: set istio.namespace, the namespace of the workloads to protect (the AuthorizationPolicy goes there)" -}}
{{- end -}}
{{- if and $v.istio.enabled $v.tls.enabled -}}
{{- fail "istio.enabled with tls.enabled: the mesh's extension provider (the notes' block) speaks plain gRPC to extauthz, so every check would fail and every request get 503; in the mesh, let the sidecars' mutual TLS carry the checks and set tls.enabled false" -}}
{{- end -}}
{{- if and $v.autoscaling.enabled (lt (int $v.autoscaling.maxReplicas) (int $v.autoscaling.minReplicas)) -}}
{{- fail "autoscaling: maxReplicas is below minReplicas" -}}
{{- end -}}
{{- if and $v.podDisruptionBudget.enabled (ne $v.store.backend "embedded") (not $v.sidecar.enabled) -}}
{{- $replicas := ternary $v.autoscaling.minReplicas $v.replicaCount $v.autoscaling.enabled | int -}}
{{- if ge (int $v.podDisruptionBudget.minAvailable) $replicas -}}
{{- fail (printf "podDisruptionBudget.minAvailable %d is not below the %d replicas: no node could ever be drained" (int $v.podDisruptionBudget.minAvailable) $replicas) -}}
{{- end -}}
{{- end -}}
{{- /*
The chart sets these variables itself, the secrets from Secrets: one given
again in extraEnv would replace it (the last of a name wins), and a secret
given there sits in clear in the Pod spec, for every reader of Deployments.
A variable the config names for a secret is taken from a Secret too.
*/ -}}
{{- $chartEnv := list "EXTAUTHZ_CONFIG" "GOMEMLIMIT" "EXTAUTHZ_PEPPER" "REDIS_PASSWORD" -}}
{{- $secretEnv := dig "store" "redis" "sentinel_password_env" "" ($v.config | default dict) -}}
{{- range $i, $e := $v.extraEnv -}}
{{- if has $e.name $chartEnv -}}
{{- fail (printf "extraEnv[%d] %s is set by the chart: the pepper and the Redis password come from their Secrets (pepper, store.redis.password), the rest from the chart's values" $i $e.name) -}}
{{- end -}}
{{- if and $secretEnv (eq $e.name $secretEnv) (hasKey $e "value") -}}
{{- fail (printf "extraEnv[%d] %s holds a secret (config.store.redis.sentinel_password_env names it): take it from a Secret with valueFrom.secretKeyRef, not value, which puts it in clear in the Pod spec" $i $e.name) -}}
{{- end -}}
{{- end -}}
{{- /*
A full key cache (320 bytes a key, docs/operations.md, Memory) is live heap,
which grows by as much again between collections: past half of GOMEMLIMIT
the collector runs without end and the kernel kills the container, on every
replica that sees that many keys.
*/ -}}
{{- $soft := include "extauthz.goMemLimitBytes" . | int64 -}}
{{- $cacheSize := dig "cache" "size" 100000 ($v.config | default dict) | int64 -}}
{{- if gt (mul $cacheSize 320 2) $soft -}}
{{- fail (printf "config.cache.size %d: a full cache takes about %d MiB, over half of GOMEMLIMIT %s (from resources.limits.memory or goMemLimit): raise the memory limit, or lower the cache size" $cacheSize (div (mul $cacheSize 320) 1048576) (include "extauthz.goMemLimit" .)) -}}
{{- end -}}
{{- /*
With Redis, /readyz fails on every replica at once when Redis is down, and
Kubernetes then takes them all out of the Service (a sidecar's, the app's
Pods out of theirs) while each could still serve its cached keys for
cache.max_stale (unset: 5m or cache.ttl, whichever is longer): the probes
(every 5 s, _pod.tpl) must tolerate failing at least that long.
*/ -}}
{{- if eq $v.store.backend "redis" -}}
{{- $cache := dig "cache" dict ($v.config | default dict) -}}
{{- $maxStale := "" -}}
{{- $source := "config.cache.max_stale" -}}
{{- if hasKey $cache "max_stale" -}}
{{- $maxStale = include "extauthz.durationSeconds" $cache.max_stale -}}
{{- else -}}
{{- $maxStale = "300" -}}
{{- $source = "config.cache.max_stale (unset: 5m)" -}}
{{- $ttl := include "extauthz.durationSeconds" (get $cache "ttl") -}}
{{- if and $ttl (gt (float64 $ttl) 300.0) -}}
{{- $maxStale = $ttl -}}
{{- $source = "config.cache.max_stale (unset: cache.ttl)" -}}
{{- end -}}
{{- end -}}
{{- $tolerated := mulf (float64 $v.readinessFailureThreshold) 5.0 -}}
{{- if and $maxStale (lt $tolerated (float64 $maxStale)) -}}
{{- fail (printf "readinessFailureThreshold %d: the readiness probe (every 5 s) takes a replica out after %v s of a Redis outage, every replica at once, while each could serve its cached keys for %s, %v s: raise it to at least %v" (int $v.readinessFailureThreshold) $tolerated $source (float64 $maxStale) (ceil (divf (float64 $maxStale) 5.0))) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The labels of the workloads Istio sends to extauthz: istio.selector, or
extauthz/protected: "true" when it is empty. The default lives here, not in
values.yaml, where Helm would merge it into a selector the user gives.
*/}}
{{- define "extauthz.istioSelector" -}}
{{- toYaml (default (dict "extauthz/protected" "true") .Values.istio.selector) -}}
{{- end -}}
