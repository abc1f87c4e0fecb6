package main

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestAPanickingHandlerAnswers503AndLogsNoValue(t *testing.T) {
	const secret = "sk_0123456789012345678901234567890123456789012abcdef"
	var logs bytes.Buffer
	h := recoverHTTP(slog.New(slog.NewJSONHandler(&logs, nil)), "test", http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		panic("cannot parse " + secret)
	}))
	srv := httptest.NewServer(h)
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Equal(t, 503, resp.StatusCode)
	assert.JSONEq(t, `{"error":"internal error","code":"unavailable"}`, string(body))
	assert.Contains(t, logs.String(), "panic recovered")
	assert.NotContains(t, logs.String(), secret)
}
