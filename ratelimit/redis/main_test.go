package redis

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/extauthz/extauthz/internal/redistest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, redistest.LeakOptions()...) }
