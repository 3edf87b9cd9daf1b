package proc

import "maps"

// CtlAccounting is the control command (on ctl.<tenant>.<call>) that returns the accounting
// processor's counts so far, in the shape of the "accounting" event with reason "running".
const CtlAccounting = "accounting"

// Control answers CtlAccounting. It runs on the call's goroutine, like Frame and Gap.
func (a *accountingCall) Control(cmd string, _ map[string]string) (any, bool, error) {
	if cmd != CtlAccounting {
		return nil, false, nil
	}
	legs := make([]LegAccount, len(a.legs))
	for i, l := range a.legs {
		l.LostBy = maps.Clone(l.LostBy)
		legs[i] = l
	}
	return Accounting{Reason: "running", Legs: legs}, true, nil
}
