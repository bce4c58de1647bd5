package hershy

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hershy/hershy/clients/go/hershyv1"
)

// ErrorDomain is the google.rpc.ErrorInfo domain of the Host's errors.
const ErrorDomain = "hershy.dev"

// Error is a failed call, with what the Host said about it: the status code,
// the ErrorInfo reason and metadata, and for bad input the field at fault
// (google.rpc.BadRequest). Every method of [Client] returns its failures as
// an *Error (use errors.As, or the Is… functions); status.FromError and
// status.Code still work on it.
type Error struct {
	// Code is the gRPC status code.
	Code codes.Code
	// Reason is the ErrorInfo reason: a stable, machine-readable name such as
	// "PROGRAM_NOT_FOUND", "WRONG_STATE", "INVALID_ARGUMENT",
	// "REVISION_COMPACTED" ("" when the Host sent no ErrorInfo).
	Reason string
	// Domain is the ErrorInfo domain, [ErrorDomain] for the Host's errors.
	Domain string
	// Message is the Host's message, written for a person.
	Message string
	// Field names the malformed request field (the first BadRequest
	// violation), e.g. "user_id" or `src_files["a/../b"]`.
	Field string
	// Description says what is wrong with Field.
	Description string
	// State is the program's state for FAILED_PRECONDITION, e.g. "READY".
	State string
	// Metadata is the ErrorInfo metadata (e.g. "state", "oldest_revision").
	Metadata map[string]string

	status *status.Status
	cause  error
}

func (e *Error) Error() string {
	if e.Reason == "" {
		return fmt.Sprintf("hershy: %s (%s)", e.Message, e.Code)
	}
	return fmt.Sprintf("hershy: %s (%s, %s)", e.Message, e.Code, e.Reason)
}

// GRPCStatus is the status the error came from (so status.FromError works).
func (e *Error) GRPCStatus() *status.Status { return e.status }

// Unwrap is context.Canceled or context.DeadlineExceeded when the caller's
// context ended the call, so errors.Is(err, context.Canceled) works.
func (e *Error) Unwrap() error { return e.cause }

// ProgramState is State as a [State] (STATE_UNSPECIFIED when there is none).
func (e *Error) ProgramState() State {
	return State(hershyv1.State_value["STATE_"+e.State])
}

// AsError turns an error from a gRPC call into an *Error (nil stays nil;
// an error with no gRPC status is returned unchanged).
func AsError(err error) error {
	return wrap(context.Background(), err)
}

func wrap(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	var already *Error
	if errors.As(err, &already) {
		return err
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	e := &Error{Code: st.Code(), Message: st.Message(), status: st}
	for _, detail := range st.Details() {
		switch detail := detail.(type) {
		case *errdetails.ErrorInfo:
			e.Reason = detail.GetReason()
			e.Domain = detail.GetDomain()
			e.Metadata = detail.GetMetadata()
			e.State = e.Metadata["state"]
		case *errdetails.BadRequest:
			if violations := detail.GetFieldViolations(); len(violations) > 0 && e.Field == "" {
				e.Field = violations[0].GetField()
				e.Description = violations[0].GetDescription()
			}
		}
	}
	if ctxErr := ctx.Err(); ctxErr != nil && (e.Code == codes.Canceled || e.Code == codes.DeadlineExceeded) {
		e.cause = ctxErr
	}
	return e
}

// Code is the gRPC status code of err: codes.OK for nil, codes.Unknown for
// an error that carries none.
func Code(err error) codes.Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return status.Code(err)
}

// IsInvalidArgument: a malformed request field (named by Error.Field) or a
// source over its limits.
func IsInvalidArgument(err error) bool { return Code(err) == codes.InvalidArgument }

// IsNotFound: no such program, or it was deleted.
func IsNotFound(err error) bool { return Code(err) == codes.NotFound }

// IsFailedPrecondition: the program's state (Error.State) does not allow the request.
func IsFailedPrecondition(err error) bool { return Code(err) == codes.FailedPrecondition }

// IsRevisionTooOld: a Watch resume revision the Host no longer remembers (or
// one ahead of it): watch again without it. [Client.Watch] does this itself.
func IsRevisionTooOld(err error) bool { return Code(err) == codes.OutOfRange }

// IsUnauthenticated: the token is missing or wrong.
func IsUnauthenticated(err error) bool { return Code(err) == codes.Unauthenticated }

// IsDeadlineExceeded: a Wait timed out, or the call's deadline passed.
func IsDeadlineExceeded(err error) bool { return Code(err) == codes.DeadlineExceeded }

// IsUnavailable: the Host is unreachable or shutting down; retrying later may work.
func IsUnavailable(err error) bool { return Code(err) == codes.Unavailable }
