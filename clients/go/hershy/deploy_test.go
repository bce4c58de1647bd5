package hershy_test

import (
	"testing"
	"time"

	"github.com/hershy/hershy/clients/go/hershy"
	"github.com/hershy/hershy/clients/go/hershyv1"
)

// A new revision in place, a resources update, the history and a rollback.
func TestDeployUpdateAndRollback(t *testing.T) {
	client := dial(t, shared.grpcAddr)
	ctx := testContext(t, 30*time.Second)
	program := check(client.Create(ctx, hershy.CreateRequest{UserID: userID(t), Dockerfile: dockerfile}))(t)
	check(client.Start(ctx, program.GetId()))(t)
	check(client.Wait(ctx, program.GetId(), hershy.StateReady, 10*time.Second))(t)

	settled := func(number int64) *hershy.Program {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			now := check(client.Get(ctx, program.GetId()))(t)
			rollout := now.GetRollout()
			if rollout.GetTargetRevisionNumber() == number && now.GetState() == hershy.StateReady &&
				rollout.GetPhase() == hershyv1.RolloutPhase_ROLLOUT_PHASE_SUCCEEDED {
				return now
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatalf("revision %d did not roll out", number)
		return nil
	}

	check(client.Deploy(ctx, program.GetId(), hershy.DeployRequest{
		Dockerfile: dockerfile, Files: map[string][]byte{"v2.txt": []byte("two")},
	}))(t)
	v2 := settled(2)
	if v2.GetId() != program.GetId() || v2.GetBuildId() == program.GetBuildId() || v2.GetRevisionNumber() != 2 {
		t.Fatalf("after the deploy: %v", v2)
	}
	check(client.UpdateResources(ctx, program.GetId(), &hershy.Resources{MemoryBytes: 128 << 20}, "resources.memory_bytes"))(t)
	if v3 := settled(3); v3.GetResources().GetMemoryBytes() != 128<<20 {
		t.Fatalf("after the update: %v", v3)
	}
	revisions := check(client.Revisions(ctx, program.GetId()))(t)
	if len(revisions) != 3 || revisions[0].GetNumber() != 3 || !revisions[0].GetCurrent() || revisions[2].GetDescription() != "create" {
		t.Fatalf("revisions %v", revisions)
	}
	check(client.Rollback(ctx, program.GetId(), 1))(t)
	if back := settled(4); back.GetBuildId() != program.GetBuildId() {
		t.Fatalf("after the rollback: %v", back)
	}
	if _, err := client.Rollback(ctx, program.GetId(), 42); !hershy.IsNotFound(err) {
		t.Fatalf("rollback to a revision that never was: %v", err)
	}
	check(client.Delete(ctx, program.GetId()))(t)
}

// An update of the restart policy and stop settings is a revision that says
// what it changed; a rollback restores the earlier ones; a bad path is refused.
func TestUpdateRestartPolicyAndStop(t *testing.T) {
	client := dial(t, shared.grpcAddr)
	ctx := testContext(t, 30*time.Second)
	program := check(client.Create(ctx, hershy.CreateRequest{UserID: userID(t), Dockerfile: dockerfile}))(t)
	check(client.Start(ctx, program.GetId()))(t)
	first := check(client.Wait(ctx, program.GetId(), hershy.StateReady, 10*time.Second))(t)

	settled := func(number int64) *hershy.Program {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			now := check(client.Get(ctx, program.GetId()))(t)
			rollout := now.GetRollout()
			if rollout.GetTargetRevisionNumber() == number && now.GetState() == hershy.StateReady &&
				rollout.GetPhase() == hershyv1.RolloutPhase_ROLLOUT_PHASE_SUCCEEDED {
				return now
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatalf("revision %d did not roll out", number)
		return nil
	}

	check(client.Update(ctx, program.GetId(), hershy.UpdateRequest{
		RestartPolicy: &hershyv1.RestartPolicy{Mode: hershyv1.RestartMode_RESTART_MODE_ON_FAILURE},
		Stop:          &hershyv1.StopSettings{Signal: "SIGINT"},
	}))(t)
	v2 := settled(2)
	if v2.GetRestartPolicy().GetMode() != hershyv1.RestartMode_RESTART_MODE_ON_FAILURE || v2.GetStop().GetSignal() != "SIGINT" {
		t.Fatalf("after the update: %v", v2)
	}
	revisions := check(client.Revisions(ctx, program.GetId()))(t)
	changed := revisions[0].GetChangedFields()
	if len(changed) != 2 || changed[0] != "restart_policy.mode" || changed[1] != "stop.signal" {
		t.Fatalf("changed fields %v", changed)
	}
	check(client.Rollback(ctx, program.GetId(), 1))(t)
	if back := settled(3); back.GetRestartPolicy().GetMode() != first.GetRestartPolicy().GetMode() || back.GetStop().GetSignal() != first.GetStop().GetSignal() {
		t.Fatalf("after the rollback: %v", back)
	}
	if _, err := client.Update(ctx, program.GetId(), hershy.UpdateRequest{Paths: []string{"state"}}); !hershy.IsInvalidArgument(err) {
		t.Fatalf("an output-only path: %v", err)
	}
	check(client.Delete(ctx, program.GetId()))(t)
}
