package hershy_test

import (
	"bytes"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/hershy/hershy/clients/go/hershy"
)

func TestNamesEnvAndSecrets(t *testing.T) {
	client := dial(t, shared.grpcAddr)
	ctx := testContext(t, 30*time.Second)
	user := userID(t)

	program := check(client.Create(ctx, hershy.CreateRequest{
		UserID: user, Dockerfile: dockerfile, Files: map[string][]byte{"app": []byte("x")},
		Alias: "go-bot", Env: map[string]string{"MODE": "paper"},
	}))(t)
	if program.GetAlias() != "go-bot" || program.GetEnv()["MODE"] != "paper" {
		t.Fatalf("created %v", program)
	}
	// The admin reaches a user's program by its name through users/{user}/programs/{alias}.
	named := "users/" + user + "/programs/go-bot"
	byName := check(client.Get(ctx, named))(t)
	if byName.GetId() != program.GetId() {
		t.Fatalf("Get(%s) = %v", named, byName)
	}
	_, err := client.Create(ctx, hershy.CreateRequest{UserID: user, Dockerfile: dockerfile, Alias: "go-bot"})
	if status.Code(err) != codes.AlreadyExists {
		t.Fatalf("a second go-bot: %v", err)
	}

	changed := check(client.SetEnv(ctx, named, map[string]string{"LEVEL": "3"}, "MODE"))(t)
	if len(changed.GetEnv()) != 1 || changed.GetEnv()["LEVEL"] != "3" {
		t.Fatalf("env %v", changed.GetEnv())
	}
	value := []byte("go-secret-value-1234")
	secret := check(client.SetSecret(ctx, named, "API_KEY", value))(t)
	if secret.GetVersion() != 1 || secret.GetSecretId() != "API_KEY" {
		t.Fatalf("secret %v", secret)
	}
	listed := check(client.Secrets(ctx, named))(t)
	if len(listed) != 1 || listed[0].GetVersion() != 1 {
		t.Fatalf("secrets %v", listed)
	}
	for _, message := range []proto.Message{secret, listed[0], changed} {
		raw, _ := proto.Marshal(message)
		if bytes.Contains(raw, value) {
			t.Fatalf("the value is in an answer: %v", message)
		}
	}
	check(client.DeleteSecret(ctx, named, "API_KEY"))(t)
	if left := check(client.Secrets(ctx, named))(t); len(left) != 0 {
		t.Fatalf("secrets left %v", left)
	}
	renamed := check(client.Rename(ctx, named, "go-bot-2"))(t)
	if renamed.GetAlias() != "go-bot-2" || renamed.GetId() != program.GetId() {
		t.Fatalf("renamed %v", renamed)
	}
	if _, err := client.Get(ctx, named); !hershy.IsNotFound(err) {
		t.Fatalf("the old name: %v", err)
	}
}
