// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import {IERC20, AgoraState} from "./AgoraState.sol";

/// @title AgoraDisputes
/// @notice The ledger's disputes that AgoraSettlement has no room for (EIP-170): material
/// demands with `Withheld` verdicts (crates/ledger/src/audit.rs, state.rs) and inclusion
/// challenges (crates/ledger/src/inclusion.rs). AgoraSettlement deploys it in its constructor,
/// with the same rules, and runs it on its own storage by delegatecall from its fallback: users
/// call these functions on the settlement address, approve the token to it once, and every
/// token stays in it. Called at its own address it refuses everything (NotSettlement).
/// See docs/settlement.md.
contract AgoraDisputes is AgoraState {
    /// @notice What a provider signs with each receipt it hands out on an EVM settlement: the
    /// receipt leaf it must put under its root of `epoch` or the next (EIP-712, the settlement's
    /// domain). `receipt` is the BLAKE3 hash of the ed25519-signed receipt, which names the
    /// same channel, cost and epoch.
    bytes32 public constant RECEIPT_TYPEHASH =
        keccak256("Receipt(bytes32 receipt,bytes32 channel,uint128 cost,uint64 epoch)");
    /// @notice A second verifier signs that the provider withheld the leaf's material from it too.
    bytes32 public constant WITHHELD_TYPEHASH = keccak256("Withheld(address provider,uint64 epoch,uint64 index)");

    constructor(IERC20 token_, Params memory p, address home_) AgoraState(token_, p, home_) {}

    /// @dev Only through the settlement's delegatecall: at its own address this contract holds
    /// no state and no tokens, and must not take approvals.
    modifier onlyHome() {
        if (address(this) != home) revert NotSettlement();
        _;
    }

    // ----- views -----

    /// @notice The parameters fixed at deployment.
    function params() external view returns (Params memory p) {
        p.epochBlocks = epochBlocks;
        p.unbondingEpochs = unbondingEpochs;
        p.auditWindowEpochs = auditWindowEpochs;
        p.escalationEpochs = escalationEpochs;
        p.answerEpochs = answerEpochs;
        p.claimWindowEpochs = claimWindowEpochs;
        p.minProviderStake = minProviderStake;
        p.minVerifierStake = minVerifierStake;
        p.auditFeeBps = auditFeeBps;
        p.slashBps = slashBps;
        p.bountyBps = bountyBps;
        p.lazySlashBps = lazySlashBps;
        p.falseAlarmBps = falseAlarmBps;
        p.auditFloorPpm = auditFloorPpm;
        p.probationJobs = probationJobs;
        p.auditFee = auditFee;
        p.plantBond = plantBond;
        p.challengeBond = challengeBond;
    }

    /// @notice The verifiers that assign the roots of `epoch`: the set frozen at its start.
    function verifierSetAt(uint64 epoch) external view returns (address[] memory) {
        return setMembers[_setAt(epoch)];
    }

    /// @notice The EIP-712 digest a provider signs for a receipt it served.
    function receiptDigest(bytes32 receipt, bytes32 channel, uint128 cost, uint64 epoch) public view returns (bytes32) {
        bytes32 structHash = keccak256(abi.encode(RECEIPT_TYPEHASH, receipt, channel, cost, epoch));
        return keccak256(abi.encodePacked("\x19\x01", domainSeparator(), structHash));
    }

    /// @notice The EIP-712 digest a confirming verifier signs for a Withheld verdict.
    function withheldDigest(address provider, uint64 epoch, uint64 index) public view returns (bytes32) {
        bytes32 structHash = keccak256(abi.encode(WITHHELD_TYPEHASH, provider, epoch, index));
        return keccak256(abi.encodePacked("\x19\x01", domainSeparator(), structHash));
    }

    /// @notice The demand on a leaf (verifier zero: none).
    function demandOf(address provider, uint64 epoch, uint64 index) external view returns (Demand memory) {
        return demands[leafKey(provider, epoch, index)];
    }

    /// @notice The challenge of a receipt (payer zero: none).
    function challengeOf(bytes32 receipt) external view returns (Challenge memory) {
        return challenges[receipt];
    }

    // ----- material demands -----

    /// @notice The assigned verifier of a selected leaf, in its commit window
    /// (e + 1 ..= e + 1 + auditWindowEpochs), asks the provider on chain for the leaf's
    /// material; the provider has until `answerEpochs` after this epoch to answer. Once per leaf.
    function demandMaterial(address provider, uint64 epoch, uint64 index) external onlyHome {
        uint256 e = epoch;
        _window(e + 1, e + 1 + auditWindowEpochs);
        if (_assigneeUnder(_beacon(epoch + 1), provider, epoch, index) != msg.sender) {
            revert NotAssigned(provider, epoch, index, msg.sender);
        }
        bytes32 key = leafKey(provider, epoch, index);
        Demand storage d = demands[key];
        if (d.verifier != address(0)) revert DemandClosed(key);
        d.verifier = msg.sender;
        d.dueEpoch = currentEpoch() + answerEpochs;
        emit MaterialDemanded(msg.sender, provider, epoch, index, d.dueEpoch);
    }

    /// @notice The provider answers a demand on its leaf: the leaf (receipt, channel, cost) under
    /// its root by `proof`, and `material`, the BLAKE3 hash of the material it hands the verifier
    /// off chain. The material itself never goes on chain (it is users' prompts and answers). An
    /// answered leaf can never be Withheld; material that does not match `material` or fails its
    /// audit is a fraud like any other.
    function answerDemand(
        uint64 epoch,
        uint64 index,
        bytes32 receipt,
        bytes32 channel,
        uint128 cost,
        bytes32[] calldata proof,
        bytes32 material
    ) external onlyHome {
        bytes32 key = leafKey(msg.sender, epoch, index);
        Demand storage d = demands[key];
        if (d.verifier == address(0)) revert NoDemand(key);
        // Answered already, or past its deadline.
        if (d.answered || currentEpoch() > d.dueEpoch) revert DemandClosed(key);
        Root storage r = _root(msg.sender, epoch);
        if (index >= r.receipts) revert BadLeafIndex(index, r.receipts);
        if (!_underRoot(r, index, receiptLeaf(receipt, channel, cost), proof)) revert BadReceiptProof(receipt);
        d.answered = true;
        d.material = material;
        emit MaterialAnswered(msg.sender, epoch, index, receipt, material);
    }

    /// @notice The verifier whose demand the provider left unanswered past its deadline brings a
    /// Withheld verdict with a second registered verifier's EIP-712 signature (withheldDigest:
    /// it asked the provider for the material itself and got nothing), in the verdict window
    /// e + 4 + w ..= e + 3 + w + x. The provider loses `slashBps` of its stake: `bountyBps` of it
    /// to the sender, the rest burned (there is no receipt to refund).
    function withheldVerdict(address provider, uint64 epoch, uint64 index, address confirmer, bytes calldata confirmerSig)
        external
        nonReentrant
        onlyHome
    {
        Leaf storage l = _checkWithheld(provider, epoch, index, confirmer, confirmerSig);
        l.judged = true;
        uint256 fee = _confirmAlarm(l);
        uint256 slashed = _slash(provider, slashBps);
        accounts[provider].frauds += 1;
        uint256 bounty = _withheldSlashed(provider, epoch, index, slashed);
        if (fee + bounty > 0) _push(msg.sender, fee + bounty);
    }

    /// @dev Splits a Withheld slash: the bounty (returned) to the sender, the rest burned.
    function _withheldSlashed(address provider, uint64 epoch, uint64 index, uint256 slashed)
        private
        returns (uint256 bounty)
    {
        bounty = (slashed * bountyBps) / 10_000;
        burned += slashed - bounty;
        emit Slashed(provider, epoch, index, 0, slashed, msg.sender, bounty, provider, 0, slashed - bounty);
    }

    /// @dev withheldVerdict's checks, in the ledger's order; returns the leaf.
    function _checkWithheld(address provider, uint64 epoch, uint64 index, address confirmer, bytes calldata confirmerSig)
        private
        view
        returns (Leaf storage l)
    {
        if (msg.sender == confirmer || provider == msg.sender || provider == confirmer) revert ConflictedVerdict();
        if (_recover(withheldDigest(provider, epoch, index), confirmerSig) != confirmer) {
            revert BadConfirmation(confirmer);
        }
        if (!accounts[confirmer].verifier) revert NotVerifier(confirmer);
        Root storage r = _root(provider, epoch);
        if (index >= r.receipts) revert BadLeafIndex(index, r.receipts);
        _window(uint256(epoch) + 4 + auditWindowEpochs, uint256(epoch) + 3 + auditWindowEpochs + escalationEpochs);
        bytes32 key = leafKey(provider, epoch, index);
        l = leaves[key];
        if (l.judged) revert AlreadyJudged(key);
        Demand storage d = demands[key];
        if (d.verifier == address(0)) revert NoDemand(key);
        // Only the demand's own verifier, only unanswered.
        if (d.verifier != msg.sender || d.answered) revert DemandClosed(key);
        // Never reached with the window above (the deadline falls before it); kept so a change of
        // either can never cut the provider's chance to answer.
        uint64 now_ = currentEpoch();
        if (now_ <= d.dueEpoch) revert AnswerStillDue(now_, d.dueEpoch);
    }

    // ----- inclusion challenges -----

    /// @notice The payer of a receipt's channel says the provider left the receipt out of its
    /// roots: `providerSig` is the channel's provider's signature over receiptDigest (the
    /// receipt leaf and the receipt's epoch). Accepted in epochs epoch + 2 ..= epoch + 1 +
    /// escalationEpochs, once per receipt, escrowing `challengeBond`. The provider answers by
    /// `answerEpochs` from now (answerInclusion, taking the bond) or anyone may slash it after
    /// (expireChallenge); until then it cannot withdraw.
    function challengeInclusion(bytes32 receipt, bytes32 channel, uint128 cost, uint64 epoch, bytes calldata providerSig)
        external
        nonReentrant
        onlyHome
    {
        Channel storage c = _channel(channel);
        address signer = _recover(receiptDigest(receipt, channel, cost, epoch), providerSig);
        if (signer != c.provider) revert ForgedReceipt(signer);
        if (c.payer != msg.sender) revert NotChannelPayer(channel, msg.sender);
        uint256 e = epoch;
        _window(e + 2, e + 1 + escalationEpochs);
        Challenge storage ch = challenges[receipt];
        if (ch.payer != address(0)) revert AlreadyChallenged(receipt);
        uint64 due = currentEpoch() + answerEpochs;
        ch.payer = msg.sender;
        ch.receiptEpoch = epoch;
        ch.dueEpoch = due;
        ch.provider = c.provider;
        ch.open = true;
        ch.channel = channel;
        ch.cost = cost;
        ch.bond = challengeBond;
        // Counted with the provider's open alarms: withdraw waits until it is answered or charged.
        accounts[c.provider].openAlarms += 1;
        emit InclusionChallenged(receipt, msg.sender, c.provider, epoch, due);
        if (challengeBond > 0) _pull(msg.sender, challengeBond);
    }

    /// @notice The challenged provider proves the receipt's leaf is leaf `index` of its root of
    /// `epoch`: the receipt's epoch or the next, or a later root audited in full (a late root, or
    /// one posted on probation), which then holds its unbonding stake until that root's verdicts
    /// can no longer land. It takes the challenger's bond.
    function answerInclusion(bytes32 receipt, uint64 epoch, uint64 index, bytes32[] calldata proof)
        external
        nonReentrant
        onlyHome
    {
        Challenge storage ch = challenges[receipt];
        if (ch.payer == address(0)) revert NoChallenge(receipt);
        if (!ch.open || ch.provider != msg.sender || currentEpoch() > ch.dueEpoch) revert NotOpenToAnswer(receipt);
        if (epoch < ch.receiptEpoch) revert WrongEpoch(ch.receiptEpoch, epoch);
        Root storage r = _root(msg.sender, epoch);
        bool onTime = epoch - ch.receiptEpoch <= 1;
        if (!onTime && r.auditPpm < FULL_AUDIT_PPM) revert LateReceiptRoot(msg.sender, ch.receiptEpoch, epoch);
        if (index >= r.receipts || !_underRoot(r, index, receiptLeaf(receipt, ch.channel, ch.cost), proof)) {
            revert BadReceiptProof(receipt);
        }
        Account storage acct = accounts[msg.sender];
        if (!onTime && acct.unbonding != 0) {
            // Its verdicts come later than the receipt's own root's would have.
            uint64 until = epoch + unbondingEpochs;
            if (acct.releaseEpoch < until) {
                acct.releaseEpoch = until;
                emit UnbondingHeld(msg.sender, until);
            }
        }
        ch.open = false;
        acct.openAlarms -= 1;
        uint256 bond = ch.bond;
        emit InclusionProven(receipt, msg.sender, epoch, index, bond);
        if (bond > 0) _push(msg.sender, bond);
    }

    /// @notice After the deadline of an unanswered challenge, anyone slashes its provider
    /// `slashBps` of its stake; the payer gets back its bond and the receipt's signed cost (at
    /// most what the channel paid and has not refunded, at most the slash); the rest is burned.
    function expireChallenge(bytes32 receipt) external nonReentrant onlyHome {
        Challenge storage ch = challenges[receipt];
        if (ch.payer == address(0)) revert NoChallenge(receipt);
        if (!ch.open) revert NotOpenToAnswer(receipt);
        uint64 now_ = currentEpoch();
        if (now_ <= ch.dueEpoch) revert ChallengeNotDue(now_, ch.dueEpoch);
        ch.open = false;
        address provider = ch.provider;
        accounts[provider].openAlarms -= 1;
        uint256 slashed = _slash(provider, slashBps);
        Channel storage c = channels[ch.channel];
        uint256 refund = _min(_min(ch.cost, uint256(c.claimed) - uint256(c.refunded)), slashed);
        c.refunded += uint128(refund);
        burned += slashed - refund;
        emit OmissionSlashed(receipt, provider, ch.payer, slashed, refund, slashed - refund);
        if (refund + ch.bond > 0) _push(ch.payer, refund + ch.bond);
    }
}
