package authz

// Code is the machine-readable reason of a denial, the "code" of the JSON
// body and the x-authz-code header. The empty Code is an allow.
type Code string

// The codes of a denial, in the order of the steps that produce them
// (Codes lists them).
const (
	CodeNoPolicy         Code = "no_policy"
	CodeBadRequest       Code = "bad_request"
	CodeNoRoute          Code = "no_route"
	CodeMissingKey       Code = "missing_key"
	CodeInvalidKey       Code = "invalid_key"
	CodeRevokedKey       Code = "revoked_key"
	CodeExpiredKey       Code = "expired_key"
	CodeIPNotAllowed     Code = "ip_not_allowed"
	CodePolicyNotAllowed Code = "policy_not_allowed"
	CodePermissionDenied Code = "permission_denied"
	CodeRateLimited      Code = "rate_limited"
	CodeUnavailable      Code = "unavailable"
)

// HTTPStatus is the HTTP status a denial with this code answers.
func (c Code) HTTPStatus() int {
	switch c {
	case "":
		return 200
	case CodeBadRequest:
		return 400
	case CodeMissingKey, CodeInvalidKey, CodeRevokedKey, CodeExpiredKey:
		return 401
	case CodeNoPolicy, CodeNoRoute, CodeIPNotAllowed, CodePolicyNotAllowed, CodePermissionDenied:
		return 403
	case CodeRateLimited:
		return 429
	}
	return 503
}

// Codes lists every denial code, in the order of the steps that produce
// them: the one list that metrics, documentation tests and adapters read.
func Codes() []Code {
	return []Code{CodeNoPolicy, CodeBadRequest, CodeNoRoute, CodeMissingKey, CodeInvalidKey, CodeRevokedKey,
		CodeExpiredKey, CodeIPNotAllowed, CodePolicyNotAllowed, CodePermissionDenied, CodeRateLimited, CodeUnavailable}
}

// defaultMessage is the human message of a code when the step has nothing
// more precise to say. Messages never contain a key.
func (c Code) defaultMessage() string {
	switch c {
	case CodeNoPolicy:
		return "no policy applies to this request"
	case CodeBadRequest:
		return "malformed request"
	case CodeNoRoute:
		return "no route allows this request"
	case CodeMissingKey:
		return "missing API key"
	case CodeInvalidKey:
		return "invalid API key"
	case CodeRevokedKey:
		return "API key has been revoked"
	case CodeExpiredKey:
		return "API key has expired"
	case CodeIPNotAllowed:
		return "client IP is not allowed for this API key"
	case CodePolicyNotAllowed:
		return "API key is not valid under this policy"
	case CodePermissionDenied:
		return "permission denied"
	case CodeRateLimited:
		return "rate limit exceeded"
	}
	return "authorization service unavailable, retry shortly"
}
