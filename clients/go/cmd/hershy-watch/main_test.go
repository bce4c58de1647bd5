package main

import (
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/hershy/hershy/clients/go/hershy"
	"github.com/hershy/hershy/clients/go/hershyv1"
)

func TestLine(t *testing.T) {
	when := time.Date(2026, 1, 2, 15, 4, 5, 123e6, time.UTC)
	event := hershy.Event{
		Kind:     hershy.EventUpdated,
		Program:  &hershy.Program{Id: "prog-3f2a", State: hershy.StateReady},
		Revision: 42,
		Cause: &hershy.ProgramEvent{
			Time: timestamppb.New(when),
			Kind: &hershyv1.ProgramEvent_ContainerReady{ContainerReady: &hershyv1.ContainerReady{}},
		},
	}
	if got, want := line(event), "2026-01-02T15:04:05.123Z prog-3f2a READY rev=42 UPDATED/container_ready"; got != want {
		t.Errorf("line = %q, want %q", got, want)
	}
	snapshot := hershy.Event{
		Kind:     hershy.EventSnapshot,
		Program:  &hershy.Program{Id: "prog-1", State: hershy.StateStopped, UpdateTime: timestamppb.New(when)},
		Revision: 7,
	}
	if got, want := line(snapshot), "2026-01-02T15:04:05.123Z prog-1 STOPPED rev=7 SNAPSHOT"; got != want {
		t.Errorf("line = %q, want %q", got, want)
	}
}
